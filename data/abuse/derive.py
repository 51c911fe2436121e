"""Derive ``corpus.csv``, the abuse classifier's carried training data, from ../shared/data.

Run from the project root: ``python data/abuse/derive.py [--shared ../shared/data]``.
It is deterministic (fixed seed), so a re-run reproduces the file byte for byte.

Each source's labels are mapped onto Assay's six abuse labels. A label a
source does not annotate is -1 ("unknown") and is masked out of the loss, so
a dataset that only says "offensive" never teaches the model that a text is
not an insult. The mapping, per source:

* Davidson: hate -> toxicity, hate; offensive -> toxicity, not hate; neither -> all 0.
* OLID: NOT -> all 0; OFF+UNT (untargeted) -> toxicity, profanity, not insult, not hate;
  OFF+TIN+IND -> toxicity, insult, not hate; OFF+TIN+GRP -> toxicity (hate unknown: OLID's
  groups include political parties, which are not protected); OFF+TIN+OTH -> toxicity, not hate,
  not insult.
* ConvAbuse (user turns, majority of annotators): not abusive -> all 0; abusive -> toxicity, with
  hate when the target is generalised and the type is racist/sexist/homophobic/transphobic/ableist,
  insult when aimed at an individual or the system, sexual for sexual harassment.
* Stormfront: hate -> toxicity, hate; noHate -> all 0 (many mention groups neutrally).
* MLMA: "normal" alone -> all 0; any "hateful" with a protected target -> toxicity, hate.
* ToxiGen demonstrations: hate -> toxicity, hate; neutral -> all 0.

Rows are split 80/10/10 into train/dev/test with a seeded shuffle per source.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

LABELS = ("toxicity", "hate", "insult", "threat", "sexual", "profanity")
U = -1  # unknown: masked out of the loss
HERE = Path(__file__).resolve().parent
SEED = 13

# How many rows to keep per (source, class); None keeps all. Sized so the whole
# build trains in a few minutes on two CPU cores.
CAPS: dict[tuple[str, str], int | None] = {
    ("davidson", "hate"): None,
    ("davidson", "offensive"): 1400,
    ("davidson", "neither"): 1500,
    ("olid", "NOT"): 2000,
    ("olid", "UNT"): None,
    ("olid", "IND"): 1400,
    ("olid", "GRP"): 700,
    ("olid", "OTH"): None,
    ("convabuse", "abusive"): None,
    ("convabuse", "not"): 700,
    ("stormfront", "hate"): None,
    ("stormfront", "noHate"): 1100,
    ("mlma", "hate"): 800,
    ("mlma", "normal"): None,
    ("toxigen", "hate"): None,
    ("toxigen", "neutral"): None,
}


def row(t: int, h: int, i: int, th: int, s: int, p: int) -> tuple[int, ...]:
    return (t, h, i, th, s, p)


_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+")


def clean(text: str) -> str:
    """Twitter noise the service never sees: handles, links, RT markers, HTML entities."""
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&#8220;", '"')
    text = re.sub(r"&#\d+;", " ", text)
    text = _URL.sub("", text)
    text = _MENTION.sub("@user", text).replace("@USER", "@user").replace("URL", "")
    text = re.sub(r"\bRT\b:?", "", text)
    text = re.sub(r"(@user\s*)+", "@user ", text)
    return " ".join(text.split()).strip(" :")


def davidson(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    with (root / "davidson-hate-offensive/labeled_data.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            cls = {"0": "hate", "1": "offensive", "2": "neither"}[r["class"]]
            labels = {
                "hate": row(1, 1, U, U, U, U),
                "offensive": row(1, 0, U, U, U, U),
                "neither": row(0, 0, 0, 0, 0, 0),
            }[cls]
            out.append((cls, clean(r["tweet"]), labels))
    return out


def olid(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    with (root / "olid/olid-training-v1.0.tsv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            a, b, c = r["subtask_a"], r["subtask_b"], r["subtask_c"]
            if a == "NOT":
                cls, labels = "NOT", row(0, 0, 0, 0, 0, 0)
            elif b == "UNT":
                cls, labels = "UNT", row(1, 0, 0, U, U, 1)
            elif c == "IND":
                cls, labels = "IND", row(1, 0, 1, U, U, U)
            elif c == "GRP":
                cls, labels = "GRP", row(1, U, U, U, U, U)
            else:
                cls, labels = "OTH", row(1, 0, 0, U, U, U)
            out.append((cls, clean(r["tweet"]), labels))
    return out


_PROTECTED_TYPES = ("racist", "sexist", "homophobic", "transphobic", "ableist")


def convabuse(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    # The EMNLP train split only: valid/test stay untouched for anyone measuring on them.
    with (root / "convabuse/ConvAbuseEMNLPtrain.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            votes: list[int] = []
            kinds: Counter[str] = Counter()
            for a in range(1, 9):
                sev = [
                    int(v) for v in ("1", "0", "-1", "-2", "-3") if r.get(f"Annotator{a}_is_abuse.{v}") == "1"
                ]
                if not sev:
                    continue
                votes.append(sev[0])
                for k in (*_PROTECTED_TYPES, "sex_harassment", "intellectual"):
                    if r.get(f"Annotator{a}_{k}") == "1":
                        kinds[k] += 1
                for k in ("generalised", "individual", "system"):
                    if r.get(f"Annotator{a}_target.{k}") == "1":
                        kinds["target." + k] += 1
            if not votes or not r["user"].strip():
                continue
            text = clean(r["user"])
            if sum(v < 0 for v in votes) * 2 <= len(votes):
                out.append(("not", text, row(0, 0, 0, 0, 0, 0)))
                continue
            half = len(votes) / 2
            protected = any(kinds[k] >= half for k in _PROTECTED_TYPES)
            hate = int(protected and kinds["target.generalised"] >= half)
            personal = kinds["target.individual"] + kinds["target.system"] >= half
            insult = 1 if personal and not hate else U
            sexual = 1 if kinds["sex_harassment"] >= half else U
            out.append(("abusive", text, row(1, hate, insult, U, sexual, U)))
    return out


def stormfront(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    with (root / "stormfront/stormfront_sentences.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["label"] == "hate":
                out.append(("hate", r["text"].strip(), row(1, 1, U, U, U, U)))
            elif r["label"] == "noHate":
                out.append(("noHate", r["text"].strip(), row(0, 0, 0, 0, 0, 0)))
    return out


_MLMA_PROTECTED = {"origin", "gender", "sexual_orientation", "religion", "disability"}


def mlma(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    with (root / "mlma/en_dataset.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            parts = set(r["sentiment"].split("_"))
            if parts == {"normal"}:
                out.append(("normal", clean(r["tweet"]), row(0, 0, 0, 0, 0, 0)))
            elif "hateful" in parts and r["target"] in _MLMA_PROTECTED:
                out.append(("hate", clean(r["tweet"]), row(1, 1, U, U, U, U)))
    return out


def toxigen(root: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    with (root / "toxigen-demonstrations/toxigen_demonstrations.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["label"] == "hate":
                out.append(("hate", r["text"].strip(), row(1, 1, U, U, U, U)))
            else:
                out.append(("neutral", r["text"].strip(), row(0, 0, 0, 0, 0, 0)))
    return out


SOURCES = {
    "davidson": (davidson, "davidson-hate-offensive", ["labeled_data.csv", "LICENSE"]),
    "olid": (olid, "olid", ["olid-training-v1.0.tsv", "LICENSE_mirror_repo"]),
    "convabuse": (convabuse, "convabuse", ["ConvAbuseEMNLPtrain.csv", "LICENSE"]),
    "stormfront": (stormfront, "stormfront", ["stormfront_sentences.csv", "LICENSE"]),
    "mlma": (mlma, "mlma", ["en_dataset.csv", "LICENSE"]),
    "toxigen": (toxigen, "toxigen-demonstrations", ["toxigen_demonstrations.csv", "LICENSE.txt"]),
}
# Where ../shared's MANIFEST does not list a source, the upstream it names in its README.
UPSTREAM = {
    "davidson": "t-davidson/hate-speech-and-offensive-language, data/labeled_data.csv",
    "toxigen": "microsoft/TOXIGEN, demonstrations/ (concatenated, duplicates removed by ../shared)",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(HERE.parents[2] / "shared" / "data"))
    args = parser.parse_args()
    root = Path(args.shared).resolve()
    manifest = {(e["dataset"], e["file"]): e for e in json.loads((root / "MANIFEST_more.json").read_text())}

    rows: list[dict[str, object]] = []
    provenance: list[str] = []
    seen: set[str] = set()
    for name, (reader, folder, files) in SOURCES.items():
        rng = random.Random(f"{SEED}:{name}")
        by_class: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for cls, text, labels in reader(root):
            key = " ".join(text.lower().split())
            if len(text) < 3 or key in seen:  # drop empties and cross-source duplicates
                continue
            seen.add(key)
            by_class.setdefault(cls, []).append((text, labels))
        kept = Counter()
        for cls in sorted(by_class):
            items = by_class[cls]
            rng.shuffle(items)
            cap = CAPS[(name, cls)]
            items = items[:cap] if cap is not None else items
            for k, (text, labels) in enumerate(items):
                split = "test" if k % 10 == 0 else "dev" if k % 10 == 1 else "train"
                rows.append(
                    {
                        "source": name,
                        "class": cls,
                        "split": split,
                        "text": text,
                        **dict(zip(LABELS, labels, strict=True)),
                    }
                )
            kept[cls] = len(items)
        license_dir = HERE / "licenses" / name
        license_dir.mkdir(parents=True, exist_ok=True)
        lic = files[1]
        (license_dir / lic).write_bytes((root / folder / lic).read_bytes())
        data_file = root / folder / files[0]
        entry = manifest.get((folder, files[0]))
        where = (
            f"{entry['source_repo']} @ {entry['commit']}, {entry['source_path']}"
            if entry
            else f"{UPSTREAM[name]} (commit not recorded)"
        )
        provenance.append(
            f"- **{name}**: {where}; file `{folder}/{files[0]}` sha256 `{sha256(data_file)}`; "
            f"licence `licenses/{name}/{lic}`; kept {dict(sorted(kept.items()))}"
        )

    out = HERE / "corpus.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["source", "class", "split", "text", *LABELS])
        writer.writeheader()
        writer.writerows(rows)
    prov = HERE / "PROVENANCE.md"
    prov.write_text(
        "# Provenance of corpus.csv\n\n"
        "Derived by `data/abuse/derive.py` (seed 13) from the copies in `../shared/data`. "
        "Labels are mapped as that script's docstring explains; -1 means the source does not "
        "annotate the label. Each source keeps its upstream licence (in `licenses/`); the "
        "corpus as a whole is redistributed under those terms, and Stormfront rows are CC BY-SA 3.0 ES.\n\n"
        + "\n".join(provenance)
        + f"\n\ncorpus.csv: {len(rows)} rows, sha256 `{sha256(out)}`.\n"
        "templates.yaml is written by the Assay authors (Apache-2.0).\n",
        encoding="utf-8",
    )
    print(f"{len(rows)} rows -> {out}")
    print(Counter((r["source"], r["split"]) for r in rows))


if __name__ == "__main__":
    main()
