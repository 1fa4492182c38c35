"""`lastfm`: the GroupLens HetRec 2011 Last.fm archive.

Interactions are (user, artist) pairs at the time the user first tagged the artist
(`user_taggedartists-timestamps.dat`, milliseconds); titles are artist names (`artists.dat`).
"""

from __future__ import annotations

import argparse
import io
import zipfile

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.fetch import DownloadFailed, download, grouplens_url
from data_prep.sources import SourceData, densify, unique_titles

HETREC_LASTFM_SHA256 = "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c"


def load_hetrec_lastfm(args: argparse.Namespace) -> SourceData:
    try:
        path = download(grouplens_url("hetrec2011/hetrec2011-lastfm-2k.zip"),
                        "hetrec2011-lastfm-2k.zip", sha256=HETREC_LASTFM_SHA256)
    except DownloadFailed as err:
        raise DataPrepError(
            f"lastfm: cannot download from GroupLens ({err}); connect to the internet, or put "
            "hetrec2011-lastfm-2k.zip in $NAPO_CACHE, or use --dataset lastfm-llara --input-dir D"
        ) from None
    with zipfile.ZipFile(path) as zf:
        tags = zf.read("user_taggedartists-timestamps.dat")
        artists = zf.read("artists.dat").decode("utf-8", errors="replace")
    tagged = pd.read_csv(io.BytesIO(tags), sep="\t")
    tagged.columns = ["user_id", "item_id", "tag_id", "timestamp"]
    tagged["timestamp"] = tagged["timestamp"].astype(np.int64) // 1000
    inter = (tagged.sort_values(["user_id", "item_id", "timestamp"])
             .drop_duplicates(["user_id", "item_id"])[["user_id", "item_id", "timestamp"]])
    items = pd.read_csv(io.StringIO(artists), sep="\t", usecols=[0, 1], keep_default_na=False,
                        quoting=3)
    items.columns = ["item_id", "title"]
    inter = inter[inter["item_id"].isin(items["item_id"])].reset_index(drop=True)
    out, new_items, maps = densify(inter, items, items_name="artists.dat",
                                   where=lambda r: f"user_taggedartists-timestamps.dat row {r + 1}")
    new_items, renamed = unique_titles(new_items)
    return SourceData(
        domain=args.domain or "music", items=new_items, interactions=out,
        checksums={"hetrec2011-lastfm-2k.zip": {"sha256": HETREC_LASTFM_SHA256, "origin": "grouplens"}},
        extra_tables={"id_map_users": maps["users"], "id_map_items": maps["items"]},
        notes={"titles_made_unique": renamed},
    )
