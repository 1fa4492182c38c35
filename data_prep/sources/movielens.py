"""MovieLens from GroupLens; ml-100k falls back to the copy inside the recbole 1.2.1 wheel.

Titles are rendered as the original files do, "Title (Year)", and made unique.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.fetch import DownloadFailed, download, grouplens_url, pip_wheel, read_zip_member
from data_prep.sources import SourceData, densify, unique_titles

# Published by GroupLens next to the archives (ml-100k.zip.md5, ml-1m.zip.md5).
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"

RECBOLE_REQ = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_FILES = {
    "recbole/dataset_example/ml-100k/ml-100k.inter":
        "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "recbole/dataset_example/ml-100k/ml-100k.item":
        "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def _filter_rating(inter: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    if getattr(args, "min_rating", None) is not None:
        inter = inter[inter["rating"] >= args.min_rating]
    return inter[["user_id", "item_id", "timestamp"]].reset_index(drop=True)


def _finish(inter: pd.DataFrame, items: pd.DataFrame, checksums: dict, name: str,
            args: argparse.Namespace) -> SourceData:
    inter = _filter_rating(inter, args)
    out, new_items, maps = densify(inter, items, items_name=name, where=lambda r: f"{name} row {r + 1}")
    new_items, renamed = unique_titles(new_items)
    return SourceData(
        domain=args.domain or "movie", items=new_items, interactions=out, checksums=checksums,
        extra_tables={"id_map_users": maps["users"], "id_map_items": maps["items"]},
        notes={"titles_made_unique": renamed},
    )


def load_ml100k(args: argparse.Namespace) -> SourceData:
    try:
        path = download(grouplens_url("movielens/ml-100k.zip"), "ml-100k.zip", md5=ML100K_MD5)
    except DownloadFailed as grouplens_err:
        return _ml100k_from_recbole(args, grouplens_err)
    with zipfile.ZipFile(path) as zf:
        data = zf.read("ml-100k/u.data")
        item_bytes = zf.read("ml-100k/u.item")
    inter = pd.read_csv(io.BytesIO(data), sep="\t", header=None,
                        names=["user_id", "item_id", "rating", "timestamp"])
    # u.item is Latin-1 encoded; "|"-separated: id|title|release date|video date|url|genres...
    items = pd.read_csv(io.BytesIO(item_bytes), sep="|", header=None, encoding="latin-1",
                        usecols=[0, 1], names=["item_id", "title"], keep_default_na=False)
    checksums = {"ml-100k.zip": {"md5": ML100K_MD5, "origin": "grouplens"}}
    return _finish(inter, items, checksums, "ml-100k/u.item", args)


def _ml100k_from_recbole(args: argparse.Namespace, grouplens_err: Exception) -> SourceData:
    try:
        wheel = pip_wheel(RECBOLE_REQ, RECBOLE_WHEEL)
    except DownloadFailed as pip_err:
        raise DataPrepError(
            f"ml-100k: GroupLens unreachable ({grouplens_err}) and the PyPI fallback failed "
            f"({pip_err}); connect to the internet or put {RECBOLE_WHEEL} in $NAPO_CACHE/wheels"
        ) from None
    if not getattr(args, "quiet", False):
        print(f"data_prep: GroupLens unreachable ({grouplens_err}); using the ml-100k copy in "
              f"{RECBOLE_REQ} from PyPI", file=sys.stderr)
    inter_name, item_name = RECBOLE_FILES
    inter_bytes = read_zip_member(wheel, inter_name, RECBOLE_FILES[inter_name])
    item_bytes = read_zip_member(wheel, item_name, RECBOLE_FILES[item_name])
    inter = pd.read_csv(io.BytesIO(inter_bytes), sep="\t")
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    raw = pd.read_csv(io.BytesIO(item_bytes), sep="\t", dtype=str, keep_default_na=False)
    raw.columns = ["item_id", "title", "year", "genres"]
    # The original renders "Title (Year)"; this copy split the year out.
    year = raw["year"].str.strip()
    title = raw["title"].str.strip().where(year == "", raw["title"].str.strip() + " (" + year + ")")
    items = pd.DataFrame({"item_id": raw["item_id"].astype(np.int64), "title": title})
    checksums = {
        inter_name.rsplit("/", 1)[1]: {"sha256": RECBOLE_FILES[inter_name], "origin": RECBOLE_REQ},
        item_name.rsplit("/", 1)[1]: {"sha256": RECBOLE_FILES[item_name], "origin": RECBOLE_REQ},
    }
    return _finish(inter, items, checksums, item_name, args)


def load_ml1m(args: argparse.Namespace) -> SourceData:
    try:
        path = download(grouplens_url("movielens/ml-1m.zip"), "ml-1m.zip", md5=ML1M_MD5)
    except DownloadFailed as err:
        raise DataPrepError(
            f"ml-1m: cannot download from GroupLens ({err}); connect to the internet, or put "
            "ml-1m.zip in $NAPO_CACHE, or use --dataset interactions with your own copy"
        ) from None
    with zipfile.ZipFile(path) as zf:
        ratings = zf.read("ml-1m/ratings.dat").decode("latin-1")
        movies = zf.read("ml-1m/movies.dat").decode("latin-1")
    inter = pd.read_csv(io.StringIO(ratings.replace("::", "\t")), sep="\t", header=None,
                        names=["user_id", "item_id", "rating", "timestamp"])
    items = pd.read_csv(io.StringIO(movies.replace("::", "\t")), sep="\t", header=None,
                        names=["item_id", "title", "genres"], keep_default_na=False, quoting=3)
    checksums = {"ml-1m.zip": {"md5": ML1M_MD5, "origin": "grouplens"}}
    return _finish(inter, items[["item_id", "title"]], checksums, "ml-1m/movies.dat", args)
