"""Derive the entailment training subset and held-out test splits from ../shared/data.

Run from the project root: ``.venv/bin/python data/nli/derive.py [--shared ../shared/data]``.
Deterministic (seed below): re-running on the same upstream files writes the same bytes.

Sources (upstream repository, path and commit in PROVENANCE.md, written by this script):

* DocNLI's binarised MNLI and FEVER: short premises, sentence-level support. DocNLI's dev and
  test files share most premises, so both are pooled and split by premise (30% of premises
  test); a seeded sample of each side is kept.
* DocNLI's MCTest-NLI (mc160 train, mc500 dev: train only): children's stories as premises,
  wrong answer options as near-copy negatives. A story is cut into the check's windows and
  the window holding the sentence MiniLM finds most similar to the hypothesis is the premise.
* BEGIN (all four files pooled, ``Generic`` responses dropped: they make no claim to
  attribute): knowledge passage -> response, ``Fully attributable`` = 1. Split by knowledge
  passage, within each data source, so no test passage is ever trained on. Long passages
  (TopicalChat, CMU-DoG) are windowed for training as above; the test split keeps them whole,
  because the check chunks them itself.
* WiCE (claim-level ``entailment_retrieval`` dev and test pooled; ``supported`` = 1,
  ``partially_supported`` and ``not_supported`` = 0, as a partly supported claim is not
  attributable). Split by the Wikipedia article the claim comes from (``meta.claim_title``).
  Train pairs: the annotated supporting sentences as premise (a partly supported claim with its
  supporting sentences is a hard negative); ``non_supported_tokens`` sub-claims (all partly
  supported) add hard negatives when their parent claim is on the train side. The test split
  keeps each claim's whole evidence page (its sentences), which the check chunks itself.

Outputs (gzip, mtime 0, JSON Lines): ``train.jsonl.gz`` (source, group, premise, hypothesis,
label, view) and ``test_{begin,wice,mnli,fever}.jsonl.gz``; ``licenses/``; ``PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import random
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SEED = 8
WINDOW_TOKENS = 128  # the check's default chunk_tokens
MNLI_TRAIN, MNLI_TEST = 5000, 1000
FEVER_TRAIN, FEVER_TEST = 4000, 1000
BEGIN_TEST_SHARE = 0.3
WICE_TEST_SHARE = 0.5

LICENSES = {
    "docnli": ["LICENSE.txt"],
    "begin": ["LICENSE", "wow_LICENSE", "topicalchat_LICENSE", "cmu-dog_LICENSE"],
    "wice": ["LICENSE.md"],
}
LICENCE_NAMES = {
    "docnli": "BSD-3-Clause (Salesforce)",
    "begin": "CC BY 4.0 (Wizard of Wikipedia, CMU-DoG); CDLA-Sharing-1.0 (TopicalChat)",
    "wice": "annotations ODC-BY 1.0; evidence text CC BY-SA (Wikipedia) and Common Crawl terms",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl_gz(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    buf = io.BytesIO()
    n = 0
    # mtime=0 and no file name: the same rows give the same bytes (they enter the build key).
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode())
            n += 1
    path.write_bytes(buf.getvalue())
    return n


def read_docnli(path: Path) -> list[tuple[str, str, int]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3 and parts[1].strip() and parts[2].strip():
                out.append((parts[1].strip(), parts[2].strip(), int(parts[0] == "entailment")))
    return out


def group_split(groups: Sequence[str], share: float, rng: random.Random) -> set[str]:
    """A seeded ``share`` of the distinct groups, as the test side."""
    distinct = sorted(set(groups))
    rng.shuffle(distinct)
    return set(distinct[: round(len(distinct) * share)])


class Windower:
    """The check's windows over a document, and the one holding the sentence most like a text."""

    def __init__(self) -> None:
        from evaluators.checks.hallucination import _sentences, sentence_windows
        from evaluators.embeddings import sentence_encoder

        self.encoder = sentence_encoder("cpu")
        self._sentences = _sentences
        self._windows = sentence_windows
        self._cache: dict[str, tuple[list[str], list[tuple[int, int]], Any]] = {}

    def _doc(self, doc: str) -> tuple[list[str], list[tuple[int, int]], Any]:
        if doc not in self._cache:
            sents = [s.encode for s in self._sentences(doc, 0)]
            lengths = [len(x) for x in self.encoder.tokenizer(sents, add_special_tokens=False)["input_ids"]]
            self._cache[doc] = (sents, self._windows(lengths, WINDOW_TOKENS), self.encoder.encode(sents))
        return self._cache[doc]

    def best_window(self, doc: str, text: str) -> str:
        sents, windows, vectors = self._doc(doc)
        if len(windows) <= 1:
            return " ".join(sents)
        sims = (vectors @ self.encoder.encode([text])[0]).tolist()
        best = max(windows, key=lambda w: max(sims[w[0] : w[1]]))
        return " ".join(sents[best[0] : best[1]])


def derive_docnli(shared: Path, rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    train: list[dict[str, Any]] = []
    tests: dict[str, list[Any]] = {}
    for name, n_train, n_test in (("MNLI", MNLI_TRAIN, MNLI_TEST), ("FEVER-NLI", FEVER_TRAIN, FEVER_TEST)):
        key = "mnli" if name == "MNLI" else "fever"
        # DocNLI's dev and test files share most premises: pool them and split by premise.
        rows = sorted(
            set(
                read_docnli(shared / "docnli" / f"binary-{name}_dev.txt")
                + read_docnli(shared / "docnli" / f"binary-{name}_test.txt")
            )
        )
        test_premises = group_split([p for p, _, _ in rows], 0.3, rng)
        test = [r for r in rows if r[0] in test_premises]
        test_hyps = {h for _, h, _ in test}
        pool = [r for r in rows if r[0] not in test_premises and r[1] not in test_hyps]
        for p, h, y in rng.sample(pool, n_train):
            train.append({"source": key, "group": p[:80], "premise": p, "hypothesis": h, "label": y})
        tests[key] = [{"premise": p, "hypothesis": h, "label": y} for p, h, y in rng.sample(test, n_test)]
    return train, tests


def derive_mctest(shared: Path, windower: Windower) -> list[dict[str, Any]]:
    rows = []
    for name in ("MCTest-NLI_mc160.train_in_entail.txt", "MCTest-NLI_mc500.dev_in_entail.txt"):
        with (shared / "docnli" / name).open(encoding="utf-8") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    continue
                label, story, hyp = parts
                premise = windower.best_window(story, hyp)
                rows.append(
                    {
                        "source": "mctest",
                        "group": story[:80],
                        "premise": premise,
                        "hypothesis": hyp.strip(),
                        "label": int(label == "entailment"),
                    }
                )
    return rows


def derive_begin(
    shared: Path, windower: Windower, rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = []
    for name in ("begin_dev_wow.tsv", "begin_test_wow.tsv", "begin_dev_tc.tsv", "begin_dev_cmu.tsv"):
        with (shared / "begin" / name).open(encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                if r["begin_label"] == "Generic" or not r["response"].strip():
                    continue
                rows.append(r)
    test_groups: set[str] = set()
    for source in sorted({r["data_source"] for r in rows}):
        groups = [r["knowledge"] for r in rows if r["data_source"] == source]
        test_groups |= group_split(groups, BEGIN_TEST_SHARE, rng)
    train, test = [], []
    for i, r in enumerate(rows):
        label = int(r["begin_label"] == "Fully attributable")
        if r["knowledge"] in test_groups:
            test.append(
                {
                    "id": f"begin-{i}",
                    "source": r["data_source"],
                    "model": r["model_name"],
                    "knowledge": r["knowledge"],
                    "response": r["response"].strip(),
                    "label": label,
                }
            )
        else:
            train.append(
                {
                    "source": "begin",
                    "group": r["knowledge"][:80],
                    "premise": windower.best_window(r["knowledge"], r["response"]),
                    "hypothesis": r["response"].strip(),
                    "label": label,
                }
            )
    return train, test


def _packed(evidence: Sequence[str], ids: Iterable[int]) -> str:
    return " ".join(evidence[i].strip() for i in sorted(set(ids)) if 0 <= i < len(evidence))


def derive_wice(
    shared: Path, windower: Windower, rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def load(name: str) -> list[dict[str, Any]]:
        with (shared / "wice" / name).open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    claims = load("entailment_retrieval_dev.jsonl") + load("entailment_retrieval_test.jsonl")
    subclaims = (
        load("non_supported_tokens_train.jsonl")
        + load("non_supported_tokens_dev.jsonl")
        + load("non_supported_tokens_test.jsonl")
    )
    test_titles = group_split([c["meta"]["claim_title"] for c in claims], WICE_TEST_SHARE, rng)
    train, test = [], []
    for c in claims:
        title = c["meta"]["claim_title"]
        label = int(c["label"] == "supported")
        if title in test_titles:
            test.append(
                {
                    "id": c["meta"]["id"],
                    "title": title,
                    "claim": c["claim"],
                    "evidence": c["evidence"],
                    "wice_label": c["label"],
                    "label": label,
                }
            )
            continue
        support = c["supporting_sentences"][0] if c["supporting_sentences"] else []
        page = "\n".join(c["evidence"])
        premise = _packed(c["evidence"], support) or windower.best_window(page, c["claim"])
        train.append(
            {"source": "wice", "group": title, "premise": premise, "hypothesis": c["claim"], "label": label}
        )
    for c in subclaims:
        title = c["meta"]["claim_title"]
        if title in test_titles:
            continue  # a sub-claim of a test claim, or another claim on a test article
        ids = {i for group in c["supporting_sentences"] for i in group}
        premise = _packed(c["evidence"], ids) or windower.best_window("\n".join(c["evidence"]), c["claim"])
        train.append(
            {"source": "wice", "group": title, "premise": premise, "hypothesis": c["claim"], "label": 0}
        )
    return train, test


def manifest(shared: Path) -> dict[tuple[str, str], dict[str, Any]]:
    entries = json.loads((shared / "MANIFEST_more.json").read_text(encoding="utf-8"))
    return {(e["dataset"], e["file"]): e for e in entries}


USED = {
    "docnli": [
        "binary-MNLI_dev.txt",
        "binary-MNLI_test.txt",
        "binary-FEVER-NLI_dev.txt",
        "binary-FEVER-NLI_test.txt",
        "MCTest-NLI_mc160.train_in_entail.txt",
        "MCTest-NLI_mc500.dev_in_entail.txt",
    ],
    "begin": ["begin_dev_wow.tsv", "begin_test_wow.tsv", "begin_dev_tc.tsv", "begin_dev_cmu.tsv"],
    "wice": [
        "entailment_retrieval_dev.jsonl",
        "entailment_retrieval_test.jsonl",
        "non_supported_tokens_train.jsonl",
        "non_supported_tokens_dev.jsonl",
        "non_supported_tokens_test.jsonl",
    ],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    shared: Path = args.shared
    out: Path = args.out
    known = manifest(shared)
    for dataset, files in USED.items():
        for name in [*files, *LICENSES[dataset]]:
            entry = known[(dataset, name)]
            if sha256(shared / dataset / name) != entry["sha256"]:
                raise SystemExit(f"{dataset}/{name}: sha256 differs from MANIFEST_more.json")

    rng = random.Random(SEED)
    windower = Windower()
    docnli_train, tests = derive_docnli(shared, rng)
    mctest_train = derive_mctest(shared, windower)
    begin_train, begin_test = derive_begin(shared, windower, rng)
    wice_train, wice_test = derive_wice(shared, windower, rng)
    train = docnli_train + mctest_train + begin_train + wice_train

    counts = {
        "train.jsonl.gz": write_jsonl_gz(out / "train.jsonl.gz", train),
        "test_begin.jsonl.gz": write_jsonl_gz(out / "test_begin.jsonl.gz", begin_test),
        "test_wice.jsonl.gz": write_jsonl_gz(out / "test_wice.jsonl.gz", wice_test),
        "test_mnli.jsonl.gz": write_jsonl_gz(out / "test_mnli.jsonl.gz", tests["mnli"]),
        "test_fever.jsonl.gz": write_jsonl_gz(out / "test_fever.jsonl.gz", tests["fever"]),
    }
    for dataset, names in LICENSES.items():
        (out / "licenses" / dataset).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(shared / dataset / name, out / "licenses" / dataset / name)

    per_source = Counter((r["source"], r["label"]) for r in train)
    lines = [
        "# Provenance of data/nli",
        "",
        f"Derived by `data/nli/derive.py` (seed {SEED}) from the copies in `../shared/data`, whose",
        "sha256 the script checks against `MANIFEST_more.json` before it reads them. How each source",
        "is sampled, labelled, windowed and split is in the script's docstring. Each source keeps its",
        "upstream licence (in `licenses/`); the derived files are redistributed under those terms.",
        "Label 1 means the premise supports (entails) the hypothesis.",
        "",
        "## Upstream files",
        "",
        "| dataset | repository @ commit | path | sha256 | licence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dataset, files in USED.items():
        for name in [*files, *LICENSES[dataset]]:
            e = known[(dataset, name)]
            lines.append(
                f"| {dataset} | {e['source_repo']} @ {e['commit']} | `{e['source_path']}` | "
                f"`{e['sha256']}` | {LICENCE_NAMES[dataset]} |"
            )
    lines += ["", "## Derived files", "", "| file | rows | sha256 | contents |", "| --- | --- | --- | --- |"]
    contents = {
        "train.jsonl.gz": "training pairs: "
        + ", ".join(f"{s} {y}: {n}" for (s, y), n in sorted(per_source.items())),
        "test_begin.jsonl.gz": "BEGIN test split (by knowledge passage): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["source"] for r in begin_test).items()))
        + f"; attributable {sum(r['label'] for r in begin_test)}",
        "test_wice.jsonl.gz": "WiCE test split (by article): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["wice_label"] for r in wice_test).items())),
        "test_mnli.jsonl.gz": "binary-MNLI sample of the test premises; entailment "
        + str(sum(r["label"] for r in tests["mnli"])),
        "test_fever.jsonl.gz": "binary-FEVER sample of the test premises; entailment "
        + str(sum(r["label"] for r in tests["fever"])),
    }
    for name, n in counts.items():
        lines.append(f"| `{name}` | {n} | `{sha256(out / name)}` | {contents[name]} |")
    lines += [
        "",
        "No BEGIN knowledge passage and no WiCE article of a test split occurs in `train.jsonl.gz`;",
        "no MNLI or FEVER test premise occurs in it either. `derive.py` is the Assay authors' code",
        "(the project's licence).",
        "",
    ]
    (out / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")
    for name, n in counts.items():
        print(f"{name}: {n} rows, {(out / name).stat().st_size / 1e6:.2f} MB")
    groups: dict[str, set[str]] = defaultdict(set)
    for r in train:
        groups[r["source"]].add(r["group"])
    print("train groups:", {k: len(v) for k, v in groups.items()})
    print("labels:", dict(sorted(per_source.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
