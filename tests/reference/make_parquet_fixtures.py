#!/usr/bin/env python3
"""Parquet fixtures for `prepare-data`, written by pyarrow (the writer behind Hugging Face
`datasets`), so ferrotron's reader is checked against an independent implementation.

Writes into tests/reference/fixtures/parquet/ (or --out DIR):

  docs.txt             the documents in fortune format (documents separated by lines "%")
  docs.jsonl           the same documents, one {"text": ...} object per line
  snappy.parquet       column "text" (string) + "id" (int64); snappy, row groups of 50 rows,
                       small data pages (several pages per row group)
  zstd.parquet         zstd, one row group, dictionary encoding off
  gzip.parquet         gzip, row groups of 64 rows
  plain.parquet        no compression, large_string column, dictionary on
  nulls.parquet        "text" nullable with rows 3 and 7 null (an error, or skipped with
                       --skip-bad)
  int_text.parquet     "text" is int64 (not a string: an error naming the column)
  nested.parquet       "text" is a list<string> (not a plain string column: an error)
  binary.parquet       "text" is binary (no string annotation); row 1 is not UTF-8

The documents are the first 300 of Debian's fortunes-min `fortunes` file (trimmed, empty
ones dropped) plus three non-ASCII ones, so the fixtures hold real text.

Regenerate (deterministic):
    PYTHONPATH=/path/to/pyarrow python3 tests/reference/make_parquet_fixtures.py
"""

import argparse
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

FORTUNES = "/usr/share/games/fortunes/fortunes"


def documents():
    with open(FORTUNES, encoding="utf-8") as f:
        text = f.read()
    docs = []
    cur = []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    docs = [d.strip() for d in docs if d.strip()][:300]
    docs += [
        "Grüße aus Zürich — naïve café déjà vu.",
        "日本語のテキストも読めます。",
        "Emoji too: 🚀 ferrotron trains on real corpora.",
    ]
    return docs


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(here, "fixtures", "parquet"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    docs = documents()
    ids = list(range(len(docs)))
    with open(os.path.join(out, "docs.txt"), "w", encoding="utf-8") as f:
        f.write("\n%\n".join(docs) + "\n")
    with open(os.path.join(out, "docs.jsonl"), "w", encoding="utf-8") as f:
        for i, d in zip(ids, docs):
            f.write(json.dumps({"id": i, "text": d}, ensure_ascii=False) + "\n")
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": pa.array(docs, pa.string())})
    pq.write_table(table, os.path.join(out, "snappy.parquet"), compression="snappy",
                   row_group_size=50, data_page_size=2048)
    pq.write_table(table, os.path.join(out, "zstd.parquet"), compression="zstd",
                   use_dictionary=False)
    pq.write_table(table, os.path.join(out, "gzip.parquet"), compression="gzip",
                   row_group_size=64)
    large = pa.table({"text": pa.array(docs, pa.large_string())})
    pq.write_table(large, os.path.join(out, "plain.parquet"), compression="none",
                   use_dictionary=True)
    with_nulls = [None if i in (3, 7) else d for i, d in enumerate(docs[:10])]
    pq.write_table(pa.table({"text": pa.array(with_nulls, pa.string())}),
                   os.path.join(out, "nulls.parquet"))
    pq.write_table(pa.table({"text": pa.array(ids[:10], pa.int64())}),
                   os.path.join(out, "int_text.parquet"))
    pq.write_table(pa.table({"text": pa.array([[d] for d in docs[:10]],
                                              pa.list_(pa.string()))}),
                   os.path.join(out, "nested.parquet"))
    pq.write_table(pa.table({"text": pa.array([b"fine", b"caf\xe9", b"also fine"],
                                              pa.binary())}),
                   os.path.join(out, "binary.parquet"))
    print(f"wrote {len(docs)} documents to {out} (pyarrow {pa.__version__})")


if __name__ == "__main__":
    main()
