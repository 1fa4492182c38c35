"""EvalArguments: every setting of an evaluation run (`napo-eval`, `recipes/evaluate.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.errors import UserError

MODES = ("rank", "generate", "both")
RANK_OVER = ("candidates", "catalogue", "both")
CONSTRAINTS = ("none", "candidates", "catalogue")


class EvalError(UserError):
    """A one-line, user-facing problem with the evaluation inputs."""


@dataclass
class EvalArguments:
    """What to evaluate (exactly one of model_name_or_path, popularity, scores_from_aux, compare),
    on which data, and how."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local model (or a PEFT adapter directory)"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter applied on top of model_name_or_path"})
    popularity: bool = field(default=False, metadata={"help": "most-popular baseline (items.jsonl train_count)"})
    scores_from_aux: str | None = field(default=None, metadata={"help": "candidate scores of an auxiliary recommender (OUT/aux of napo-recsys)"})
    compare: list[str] | None = field(default=None, metadata={"help": "render one table comparing evaluation runs (their output dirs)"})
    dataset_dir: str | None = field(default=None, metadata={"help": "prepared dataset directory (python -m data_prep)"})
    split: str = field(default="test", metadata={"help": "split to evaluate"})
    mode: str = field(default="rank", metadata={"help": "rank (log-likelihood of the candidates), generate (greedy + title matching) or both", "choices": list(MODES)})
    output_dir: str | None = field(default=None, metadata={"help": "where metrics.json, predictions.jsonl, report.md, plots/ go"})
    name: str | None = field(default=None, metadata={"help": "row name in comparisons (default: the output directory's name)"})
    max_examples: int | None = field(default=None, metadata={"help": "evaluate N examples only (the first N, or a sample with sample_seed)"})
    sample_seed: int | None = field(default=None, metadata={"help": "with max_examples: a seeded uniform sample of rows instead of the first N"})
    batch_size: int = field(default=8, metadata={"help": "examples per forward / generate call"})
    length_normalize: bool = field(default=False, metadata={"help": "rank by mean instead of summed log-prob"})
    scoring: str = field(default="packed", metadata={"help": "rank scorer layout (answer: item-token data, each candidate scored by its token at the answer position, EOS not scored)", "choices": ["packed", "naive", "answer"]})
    rank_over: str = field(default="candidates", metadata={"help": "rank mode: the row's candidates (rank section), the whole catalogue (full section: the recommenders' full/... keys; needs history-only prompts, data_prep --prompt-style history) or both", "choices": list(RANK_OVER)})
    exclude_history: bool = field(default=False, metadata={"help": "full ranking: drop the row's history items from the ranking (the target stays), as napo-recsys exclude_history"})
    catalogue_chunk: int = field(default=256, metadata={"help": "full ranking of a title model: titles per packed row (the prompt is encoded once per chunk)"})
    retrieve_from: str | None = field(default=None, metadata={"help": "full ranking in two stages: the auxiliary recommender (OUT/aux of napo-recsys, with items.safetensors) retrieves retrieve_top items, the LLM re-ranks them"})
    retrieve_top: int = field(default=0, metadata={"help": "with retrieve_from: items retrieved per row (0 = the LLM scores the whole catalogue)"})
    constrain: list[str] = field(default_factory=lambda: ["none"], metadata={"help": "generate mode, one section each: none (free greedy decoding, the papers' protocol: generate), candidates (decoding restricted to the row's candidates: generate/candidates) or catalogue (to any catalogue item: generate/catalogue)"})
    max_new_tokens: int = field(default=20, metadata={"help": "generation budget (the papers use 20)"})
    containment: str = field(default="word", metadata={"help": "answer matching: a title must occur as whole words (word) or as any substring (substring, the papers')", "choices": ["word", "substring"]})
    completion_prefix: str = field(default="", metadata={"help": "text between the prompt and each completion"})
    max_prompt_length: int | None = field(default=None, metadata={"help": "truncate prompts from the left to N tokens"})
    dtype: str = field(default="auto", metadata={"help": "model dtype: auto, float32, bfloat16, float16"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager or sdpa (packed scoring needs a 4D mask)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA-style 4-bit base (bitsandbytes)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code (off by default)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bars"})
    output: str | None = field(default=None, metadata={"help": "with compare: also write the table to this file and the figure beside it (.png)"})
    names: list[str] | None = field(default=None, metadata={"help": "with compare: one row name per run; runs sharing a name are seeds of one method in the figure"})

    def __post_init__(self):
        chosen = [n for n in ("model_name_or_path", "popularity", "scores_from_aux", "compare") if getattr(self, n)]
        if len(chosen) != 1:
            raise EvalError("give exactly one of model_name_or_path, popularity, scores_from_aux, compare")
        if not self.compare and (not self.dataset_dir or not self.output_dir):
            raise EvalError("dataset_dir and output_dir are required (in the config or as --dataset_dir / --output_dir)")
        if (self.popularity or self.scores_from_aux) and self.mode != "rank":
            raise EvalError("popularity and scores_from_aux rank candidates: use mode rank")
        if self.mode not in MODES:
            raise EvalError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.batch_size < 1:
            raise EvalError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise EvalError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.rank_over not in RANK_OVER:
            raise EvalError(f"rank_over {self.rank_over!r} is not one of {', '.join(RANK_OVER)}")
        if isinstance(self.constrain, str):  # YAML `constrain: candidates` (or "none candidates")
            self.constrain = self.constrain.replace(",", " ").split()
        bad = [c for c in self.constrain if c not in CONSTRAINTS]
        if bad or not self.constrain or len(set(self.constrain)) != len(self.constrain):
            raise EvalError(f"constrain {' '.join(self.constrain)!r}: give one or more distinct values of "
                            f"{', '.join(CONSTRAINTS)}")
        if self.catalogue_chunk < 1:
            raise EvalError(f"catalogue_chunk must be >= 1, got {self.catalogue_chunk}")
        if self.retrieve_top < 0 or (self.retrieve_top > 0) != bool(self.retrieve_from):
            raise EvalError("two-stage ranking needs both retrieve_from (an aux directory) and retrieve_top "
                            f"(items per row, >= 1); got retrieve_from {self.retrieve_from!r}, retrieve_top {self.retrieve_top}")
        if self.retrieve_top and not self.model_name_or_path:
            raise EvalError("retrieve_from / retrieve_top re-rank with an LLM: give model_name_or_path")
        if self.retrieve_top and self.rank_over == "candidates":
            raise EvalError("retrieve_from / retrieve_top rank the catalogue: set rank_over catalogue (or both)")

    @property
    def modes(self) -> list[str]:
        return ["rank", "generate"] if self.mode == "both" else [self.mode]

    @property
    def generate_sections(self) -> list[str]:
        """The metrics.json sections of generate mode: generate, generate/candidates, generate/catalogue."""
        return ["generate" if c == "none" else f"generate/{c}" for c in self.constrain]
