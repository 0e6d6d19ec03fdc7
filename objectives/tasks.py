"""Classification tasks: loading LM-BFF folders, the offline Rotten Tomatoes asset and Hugging Face datasets.

Every loader returns plain :class:`Example` tuples, so the rest of the system never sees a file format. A
:class:`Task` holds the three splits a sweep trial needs: ``train`` to optimise the prompt, ``dev`` to select
it, ``test`` to report it. Few-shot subsampling draws train/dev from the run seed but keeps the test subset
fixed (``random.Random(0)``), so every trial of a sweep is scored on the same test examples and scores stay
comparable across seeds.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
LMBFF_FILES = ("train.tsv", "dev.tsv", "test.tsv")
ROTTEN_TOMATOES = "rotten-tomatoes"
DEFAULT_N_TEST = 500
# The test subset's seed is a constant on purpose: it must not follow the run seed (see module docstring).
_TEST_SEED = 0
_SOURCE_FORMS = (
    f"{ROTTEN_TOMATOES!r} (offline asset), 'hf:NAME' or 'hf:NAME:CONFIG' (Hugging Face dataset), "
    "or the path of an LM-BFF folder holding train.tsv, dev.tsv and test.tsv"
)


class TaskError(UserError, ValueError):
    """A task's data is missing, malformed or does not fit the requested setup."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]
    num_classes: int

    def split(self, split: str) -> tuple[Example, ...]:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        examples: tuple[Example, ...] = getattr(self, split)
        return examples

    def texts(self, split: str) -> list[str]:
        return [e.text for e in self.split(split)]

    def labels(self, split: str) -> list[int]:
        return [e.label for e in self.split(split)]


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise TaskError(f"num_classes={num_classes} is invalid; a classification task needs num_classes >= 2")


def read_tsv(path: Path, *, num_classes: int) -> list[Example]:
    """Read one LM-BFF TSV file (header with ``sentence`` and ``label``; other columns are ignored)."""
    _check_num_classes(num_classes)
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path} is missing; an LM-BFF folder must contain {', '.join(LMBFF_FILES)}")
    data = path.read_bytes()
    if b"\0" in data:
        # No text file holds a NUL byte (a UTF-16 one does, as do images and archives): say binary, not encoding.
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise TaskError(
            f"{path}, line {line}: a NUL byte; this is a binary (or UTF-16) file, not UTF-8 tab-separated text"
        )
    try:
        # Decoded whole, up front, so that a file in another encoding fails here naming the byte and its line,
        # not as a UnicodeDecodeError inside the csv reader. A UTF-8 byte-order mark is accepted (and dropped).
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise TaskError(
            f"{path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text (a latin-1 or binary file?); "
            "task files must be UTF-8: convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
        ) from err
    examples: list[Example] = []
    # QUOTE_NONE: SST sentences contain bare double quotes, which the default dialect would treat as field
    # quoting and so merge or split rows.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader, None)
        if not header:
            raise TaskError(f"{path} is empty; it needs a header row ('sentence', 'label') and data rows")
        columns = [c.strip() for c in header]
        missing = [c for c in ("sentence", "label") if c not in columns]
        if missing:
            raise TaskError(
                f"{path}: header lacks {missing}; found columns {columns}, expected at least "
                "['sentence', 'label'] (tab-separated)"
            )
        text_at, label_at = columns.index("sentence"), columns.index("label")
        for row in reader:
            line = reader.line_num
            if not row:
                # Blank lines (typically a trailing newline) carry no example.
                continue
            if len(row) != len(columns):
                raise TaskError(
                    f"{path}, line {line}: {len(row)} tab-separated fields, but the header has "
                    f"{len(columns)}; fix the row (a stray tab inside the sentence?)"
                )
            raw = row[label_at].strip()
            try:
                label = int(raw)
            except ValueError:
                label = -1
            if not 0 <= label < num_classes:
                raise TaskError(
                    f"{path}, line {line}: label {raw!r} is not an integer in [0, {num_classes}); "
                    "labels must be class indices below num_classes; check num_classes (and the verbalizer "
                    "words, one per class) against this data set"
                )
            examples.append(Example(text=row[text_at], label=label))
    except csv.Error as err:
        # Under QUOTE_NONE, with NUL bytes refused above, this can only be a field over csv.field_size_limit()
        # (128 KiB): far beyond any model's context, and usually a file whose line breaks were lost.
        raise TaskError(
            f"{path}, line {reader.line_num}: {err}; no sentence is that long: is this a file without "
            "line breaks? Write one example per line, sentence and label separated by a tab"
        ) from err
    if not examples:
        raise TaskError(f"{path} has a header but no rows; it needs at least one example")
    return examples


def load_lmbff(folder: str | Path, *, num_classes: int) -> tuple[list[Example], list[Example], list[Example]]:
    """Train, dev and test examples of an LM-BFF folder (e.g. ``data/k-shot/SST-2/16-100``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TaskError(f"LM-BFF folder {folder} does not exist; pass a folder that contains {', '.join(LMBFF_FILES)}")
    train, dev, test = (read_tsv(folder / name, num_classes=num_classes) for name in LMBFF_FILES)
    logger.info("loaded %s: %d train, %d dev, %d test", folder, len(train), len(dev), len(test))
    return train, dev, test


@functools.cache
def load_rotten_tomatoes() -> tuple[Example, ...]:
    """Fresh (1, positive) and rotten (0, negative) snippets of the offline asset, deduplicated, in order.

    Read once per process: every replicate and trial draws its k-shot splits from the same pool.
    """
    import pandas as pd

    from objectives import assets

    frame = pd.read_csv(assets.rotten_tomatoes_csv())
    labels = {"fresh": 1, "rotten": 0}
    frame = frame[frame["category"].isin(labels)]
    texts = frame["text"].fillna("").astype(str).str.strip()
    keep = (texts != "") & ~texts.duplicated()
    examples = tuple(
        Example(text=text, label=labels[category])
        for text, category in zip(texts[keep], frame["category"][keep], strict=True)
    )
    logger.info(
        "loaded %d Rotten Tomatoes snippets (%d dropped as empty or duplicate)",
        len(examples),
        int((~keep).sum()),
    )
    return examples


def _columns(rows: Any) -> list[str]:
    # A datasets.Dataset knows its columns; a plain list of dicts (tests, small mirrors) shows them per row.
    names = getattr(rows, "column_names", None)
    if names is not None:
        return list(names)
    first = next(iter(rows), None)
    return list(first) if isinstance(first, Mapping) else []


def load_hf(
    name: str,
    *,
    num_classes: int,
    config: str | None = None,
    text_column: str = "sentence",
    label_column: str = "label",
) -> dict[str, list[Example]]:
    """Every split of a Hugging Face dataset; negative labels (unlabelled test splits) are kept as is."""
    _check_num_classes(num_classes)
    try:
        import datasets
    except ImportError as err:
        raise TaskError(
            f"loading the Hugging Face dataset {name!r} needs the 'datasets' package; install it with "
            "pip install datasets (or the project's 'hf' extra: pip install -e '.[hf]')"
        ) from err
    label = name if config is None else f"{name!r} (config {config!r})"
    try:
        loaded = datasets.load_dataset(name, config)
    # The hub raises many unrelated types (connection, missing config, parse errors); all mean not loadable.
    except Exception as err:
        raise TaskError(
            f"could not load the Hugging Face dataset {label}: {err}; the hub may be unreachable (offline "
            f"machine?) or the name/config may be wrong; offline, use an LM-BFF folder or {ROTTEN_TOMATOES!r}"
        ) from err
    splits: dict[str, list[Example]] = {}
    for split in loaded:
        rows = loaded[split]
        columns = _columns(rows)
        missing = [c for c in (text_column, label_column) if c not in columns]
        if missing:
            raise TaskError(
                f"Hugging Face dataset {label}, split {split!r}: no column {missing}; its columns are "
                f"{columns}; pass text_column=/label_column= naming the right ones"
            )
        examples: list[Example] = []
        for index, row in enumerate(rows):
            value = int(row[label_column])
            if value >= num_classes:
                raise TaskError(
                    f"Hugging Face dataset {label}, split {split!r}, row {index}: label {value} is outside "
                    f"[0, {num_classes}); check num_classes (and the verbalizer words, one per class)"
                )
            examples.append(Example(text=str(row[text_column]), label=value))
        splits[str(split)] = examples
    logger.info("loaded Hugging Face dataset %s: %s", label, {s: len(e) for s, e in splits.items()})
    return splits


def kshot(examples: Sequence[Example], k: int, *, seed: int, num_classes: int) -> list[Example]:
    """``k`` examples per class drawn without replacement, in an order shuffled by the same seed."""
    _check_num_classes(num_classes)
    if k < 1:
        raise TaskError(f"k={k} is invalid; k-shot sampling needs k >= 1 examples per class")
    by_class: list[list[Example]] = [[] for _ in range(num_classes)]
    for example in examples:
        if not 0 <= example.label < num_classes:
            raise TaskError(
                f"example {example.text[:60]!r} has label {example.label}, outside [0, {num_classes}); "
                "check num_classes"
            )
        by_class[example.label].append(example)
    rng = random.Random(seed)
    chosen: list[Example] = []
    for label, group in enumerate(by_class):
        if len(group) < k:
            raise TaskError(
                f"class {label} has only {len(group)} examples, fewer than k={k}; lower k_shot (k_dev for the dev "
                "split) or use a larger split"
            )
        chosen.extend(rng.sample(group, k))
    rng.shuffle(chosen)
    return chosen


def _fixed_subset(examples: Sequence[Example], n: int | None) -> list[Example]:
    if n is None or n >= len(examples):
        return list(examples)
    # Sorted indices keep the file order, which makes the subset easy to compare against the source.
    picked = sorted(random.Random(_TEST_SEED).sample(range(len(examples)), n))
    return [examples[i] for i in picked]


def _without(pool: Sequence[Example], taken: Sequence[Example]) -> list[Example]:
    used = set(taken)
    return [e for e in pool if e not in used]


def check_split(examples: Sequence[Example], num_classes: int, what: str) -> None:
    """Every class has an example in ``examples``, and not every text is empty.

    A split without some class is refused, not run: trained on one class a prompt learns only to name it, a dev
    split without a class selects for it, and a test split without one cannot show whether the prompt separates
    the classes. A missing class is most often a verbalizer with more words than the data has classes (each
    word is a class). Single empty sentences are accepted (the scorer gives them one filler token, as a data
    set may hold an empty review); a split of nothing but empty sentences is a broken file.
    """
    present = sorted({e.label for e in examples if e.label >= 0})
    missing = [c for c in range(num_classes) if c not in present]
    if missing:
        raise TaskError(
            f"{what} has no example of class {', '.join(map(str, missing))} (its labels: "
            f"{', '.join(map(str, present)) or 'none'}); every split needs every class. Check the data, or the "
            f"verbalizer: its {num_classes} words make {num_classes} classes, so give one word per class of the data"
        )
    if examples and not any(e.text.strip() for e in examples):
        raise TaskError(f"{what}: every sentence is empty; check the file's 'sentence' column")


def _check_labelled(examples: Sequence[Example], what: str) -> None:
    if any(e.label < 0 for e in examples):
        raise TaskError(f"{what} has unlabelled examples (label < 0); it cannot be used for training or dev")


def _rotten_tomatoes_task(
    *, num_classes: int, k_shot: int | None, k_dev: int | None, n_test: int | None, seed: int
) -> Task:
    if num_classes != 2:
        raise TaskError(
            f"{ROTTEN_TOMATOES!r} has 2 classes (rotten, fresh), but num_classes={num_classes}; pass num_classes=2"
        )
    if k_shot is None:
        raise TaskError(
            f"{ROTTEN_TOMATOES!r} has no predefined train/dev splits, so k_shot is required; pass e.g. k_shot=16"
        )
    n_test = DEFAULT_N_TEST if n_test is None else n_test
    pool = list(load_rotten_tomatoes())
    if n_test >= len(pool):
        raise TaskError(
            f"n_test={n_test} leaves no training examples out of {len(pool)} Rotten Tomatoes snippets; "
            f"pass a smaller n_test (default {DEFAULT_N_TEST})"
        )
    # One fixed shuffle: the test slice must be the same for every run seed.
    random.Random(_TEST_SEED).shuffle(pool)
    test, rest = pool[:n_test], pool[n_test:]
    train = kshot(rest, k_shot, seed=seed, num_classes=2)
    dev = kshot(_without(rest, train), k_dev or k_shot, seed=seed + 1, num_classes=2)
    return Task(ROTTEN_TOMATOES, tuple(train), tuple(dev), tuple(test), num_classes)


def _hf_task(
    spec: str, *, num_classes: int, k_shot: int | None, k_dev: int | None, n_test: int | None, seed: int
) -> Task:
    parts = spec.split(":", 2)
    name, config = parts[1], (parts[2] if len(parts) == 3 else None)
    if not name or config == "":
        raise TaskError(f"task source {spec!r} is malformed; use 'hf:NAME' or 'hf:NAME:CONFIG', e.g. 'hf:glue:sst2'")
    splits = load_hf(name, num_classes=num_classes, config=config)
    if "train" not in splits:
        raise TaskError(f"Hugging Face dataset {spec!r} has no 'train' split (found {sorted(splits)})")
    train_pool = splits["train"]
    _check_labelled(train_pool, f"{spec!r} split 'train'")
    check_split(train_pool, num_classes, f"Hugging Face dataset {spec!r}, split 'train'")
    validation = splits.get("validation", splits.get("dev"))
    test = splits.get("test")
    dev_pool: list[Example] | None = validation
    if not test or any(e.label < 0 for e in test):
        # GLUE-style datasets hide test labels; LM-BFF then reports on validation and draws dev from train.
        if validation is None:
            raise TaskError(
                f"Hugging Face dataset {spec!r} has no labelled test split and no validation split to use "
                f"instead (found {sorted(splits)})"
            )
        test, dev_pool = validation, None
    if k_shot is not None:
        train = kshot(train_pool, k_shot, seed=seed, num_classes=num_classes)
        dev_source = dev_pool if dev_pool is not None else _without(train_pool, train)
        dev = kshot(dev_source, k_dev or k_shot, seed=seed + 1, num_classes=num_classes)
    else:
        if dev_pool is None:
            why = "validation is used as test (test has no labels)" if validation else "no validation split"
            raise TaskError(
                f"Hugging Face dataset {spec!r}: {why}, so there is no separate dev split; pass k_shot to "
                "draw dev from train"
            )
        train, dev = train_pool, dev_pool
        if k_dev is not None:
            dev = kshot(dev, k_dev, seed=seed + 1, num_classes=num_classes)
    _check_labelled(dev, f"{spec!r} dev split")
    check_split(dev, num_classes, f"Hugging Face dataset {spec!r}, dev split")
    check_split(test, num_classes, f"Hugging Face dataset {spec!r}, test split")
    task_name = name if config is None else f"{name}/{config}"
    return Task(task_name, tuple(train), tuple(dev), tuple(_fixed_subset(test, n_test)), num_classes)


def _folder_task(
    folder: Path, *, num_classes: int, k_shot: int | None, k_dev: int | None, n_test: int | None, seed: int
) -> Task:
    train, dev, test = load_lmbff(folder, num_classes=num_classes)
    for split, examples in zip(SPLITS, (train, dev, test), strict=True):
        check_split(examples, num_classes, str(folder / f"{split}.tsv"))
    if k_shot is not None:
        train = kshot(train, k_shot, seed=seed, num_classes=num_classes)
    if (k_dev or k_shot) is not None:
        dev = kshot(dev, k_dev or k_shot, seed=seed, num_classes=num_classes)
    resolved = folder.resolve()
    name = f"{resolved.parent.name}/{resolved.name}"
    return Task(name, tuple(train), tuple(dev), tuple(_fixed_subset(test, n_test)), num_classes)


def load_task(
    source: str,
    *,
    num_classes: int,
    k_shot: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    k_dev: int | None = None,
) -> Task:
    """A :class:`Task` from ``source``: ``'rotten-tomatoes'``, ``'hf:NAME[:CONFIG]'`` or an LM-BFF folder.

    ``k_shot`` examples per class are drawn for train (and for dev, unless ``k_dev`` sets dev's own size:
    a larger dev split costs only evaluation and makes selection less noisy).
    """
    _check_num_classes(num_classes)
    for name, value in (("k_shot", k_shot), ("k_dev", k_dev)):
        if value is not None and value < 1:
            raise TaskError(f"{name}={value} is invalid; pass {name} >= 1 (examples per class) or None")
    if n_test is not None and n_test < 1:
        raise TaskError(f"n_test={n_test} is invalid; pass n_test >= 1 or None for the whole test split")
    sizes = {"num_classes": num_classes, "k_shot": k_shot, "k_dev": k_dev, "n_test": n_test, "seed": seed}
    folder = Path(source).expanduser()
    if source == ROTTEN_TOMATOES:
        task = _rotten_tomatoes_task(**sizes)
    elif source.startswith("hf:"):
        task = _hf_task(source, **sizes)
    elif folder.is_dir():
        task = _folder_task(folder, **sizes)
    else:
        looks_like_path = "/" in source or "\\" in source or source.startswith((".", "~"))
        detail = f"the path {source!r} does not exist or is not a folder; " if looks_like_path else ""
        raise TaskError(f"unknown task source {source!r}; {detail}accepted forms: {_SOURCE_FORMS}")
    missing = sorted(set(range(num_classes)) - set(task.labels("test")))
    if missing:
        # The whole test split holds every class (checked above); only a small n_test subset can miss one.
        logger.warning(
            "the %d test examples (n_test) of %s hold no example of class %s; test accuracy is then one-sided: "
            "raise n_test",
            len(task.test),
            task.name,
            missing,
        )
    return task


def verbalizer_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Token ids of the verbalizer words, one per class; each word must be exactly one token."""
    words = list(words)
    if len(words) < 2:
        raise TaskError(f"verbalizer {words!r} has fewer than 2 words; give one word per class (e.g. ' bad', ' good')")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise TaskError(f"verbalizer {words!r} repeats {duplicates}; every class needs its own word")
    ids: list[int] = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            pieces = [tokenizer.decode([i]) for i in encoded]
            raise TaskError(
                f"verbalizer word {word!r} splits into {pieces} under this tokenizer; pick a word that is "
                "one token, usually with a leading space like ' great'"
            )
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise TaskError(f"verbalizer words {words!r} map to repeated token ids {ids}; pick distinct words")
    return ids
