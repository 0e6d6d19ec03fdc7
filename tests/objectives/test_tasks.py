from __future__ import annotations

import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from objectives import assets
from objectives.tasks import (
    Example,
    Task,
    TaskError,
    kshot,
    load_hf,
    load_lmbff,
    load_rotten_tomatoes,
    load_task,
    read_tsv,
    verbalizer_ids,
)


def _write_tsv(path: Path, rows: list[tuple[str, int]], header: str = "sentence\tlabel") -> Path:
    lines = [header] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _balanced(n_per_class: int, prefix: str, num_classes: int = 2) -> list[tuple[str, int]]:
    return [(f"{prefix} {c}-{i}", c) for i in range(n_per_class) for c in range(num_classes)]


@pytest.fixture
def lmbff(tmp_path: Path) -> Path:
    folder = tmp_path / "sst-2" / "16-100"
    folder.mkdir(parents=True)
    _write_tsv(folder / "train.tsv", _balanced(20, "train"))
    _write_tsv(folder / "dev.tsv", _balanced(20, "dev"))
    _write_tsv(folder / "test.tsv", _balanced(50, "test"))
    return folder


# --- read_tsv / load_lmbff -----------------------------------------------------------------------------


def test_load_lmbff_reads_three_splits(lmbff: Path):
    train, dev, test = load_lmbff(lmbff, num_classes=2)
    assert (len(train), len(dev), len(test)) == (40, 40, 100)
    assert train[0] == Example("train 0-0", 0)
    assert train[1] == Example("train 1-0", 1)
    assert Counter(e.label for e in test) == {0: 50, 1: 50}


def test_read_tsv_keeps_quotes_and_extra_columns(tmp_path: Path):
    path = tmp_path / "train.tsv"
    rows = ['1\t1\tthe "best" film of the year', '2\t0\t" unbalanced quote', '3\t1\ta\'s "b" c"']
    path.write_text("id\tlabel\tsentence\n" + "\n".join(rows) + "\n", encoding="utf-8")
    examples = read_tsv(path, num_classes=2)
    assert examples == [
        Example('the "best" film of the year', 1),
        Example('" unbalanced quote', 0),
        Example('a\'s "b" c"', 1),
    ]


def test_missing_folder(tmp_path: Path):
    with pytest.raises(TaskError, match=r"nope does not exist.*train\.tsv, dev\.tsv, test\.tsv"):
        load_lmbff(tmp_path / "nope", num_classes=2)


def test_missing_file(lmbff: Path):
    (lmbff / "dev.tsv").unlink()
    with pytest.raises(TaskError, match=r"dev\.tsv is missing"):
        load_lmbff(lmbff, num_classes=2)


def test_header_without_label(tmp_path: Path):
    path = _write_tsv(tmp_path / "train.tsv", [("a", 0)], header="sentence\tclass")
    with pytest.raises(TaskError, match=r"train\.tsv: header lacks \['label'\]; found columns \['sentence', 'class'\]"):
        read_tsv(path, num_classes=2)


def test_header_without_sentence(tmp_path: Path):
    path = _write_tsv(tmp_path / "train.tsv", [("a", 0)], header="text\tlabel")
    with pytest.raises(TaskError, match=r"lacks \['sentence'\].*expected at least \['sentence', 'label'\]"):
        read_tsv(path, num_classes=2)


@pytest.mark.parametrize("label", ["2", "-1", "pos", "1.0"])
def test_bad_label(tmp_path: Path, label: str):
    path = tmp_path / "train.tsv"
    path.write_text(f"sentence\tlabel\ngood\t1\nbad\t{label}\n", encoding="utf-8")
    with pytest.raises(TaskError, match=rf"train\.tsv, line 3: label '{label}' .*\[0, 2\).*num_classes.*verbalizer"):
        read_tsv(path, num_classes=2)


def test_empty_file(tmp_path: Path):
    path = tmp_path / "train.tsv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(TaskError, match=r"train\.tsv is empty"):
        read_tsv(path, num_classes=2)


def test_header_only(tmp_path: Path):
    path = _write_tsv(tmp_path / "test.tsv", [])
    with pytest.raises(TaskError, match=r"test\.tsv has a header but no rows"):
        read_tsv(path, num_classes=2)


def test_wrong_field_count(tmp_path: Path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\na\tstray tab\t0\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"train\.tsv, line 3: 3 tab-separated fields, but the header has 2"):
        read_tsv(path, num_classes=2)


# --- kshot ---------------------------------------------------------------------------------------------

POOL = [Example(f"t{c}-{i}", c) for i in range(30) for c in range(3)]


def test_kshot_k_per_class_and_deterministic():
    first = kshot(POOL, 4, seed=7, num_classes=3)
    assert Counter(e.label for e in first) == {0: 4, 1: 4, 2: 4}
    assert len(set(first)) == 12
    assert kshot(POOL, 4, seed=7, num_classes=3) == first
    assert kshot(POOL, 4, seed=8, num_classes=3) != first
    # Output order is shuffled, not grouped by class.
    assert [e.label for e in first] != sorted(e.label for e in first)


def test_kshot_too_few():
    pool = [e for e in POOL if e.label != 1] + [e for e in POOL if e.label == 1][:2]
    with pytest.raises(TaskError, match=r"class 1 has only 2 examples, fewer than k=5"):
        kshot(pool, 5, seed=0, num_classes=3)


def test_kshot_k_below_one():
    with pytest.raises(TaskError, match=r"k=0 is invalid"):
        kshot(POOL, 0, seed=0, num_classes=3)


# --- load_task -----------------------------------------------------------------------------------------


def test_load_task_folder_as_given(lmbff: Path):
    task = load_task(str(lmbff), num_classes=2)
    assert task.name == "sst-2/16-100"
    assert (len(task.train), len(task.dev), len(task.test)) == (40, 40, 100)
    assert task.texts("train")[0] == "train 0-0"
    assert task.labels("test")[:2] == [0, 1]
    with pytest.raises(TaskError, match=r"unknown split 'valid'"):
        task.texts("valid")


def test_load_task_folder_kshot_and_fixed_test(lmbff: Path):
    a = load_task(str(lmbff), num_classes=2, k_shot=4, n_test=10, seed=1)
    b = load_task(str(lmbff), num_classes=2, k_shot=4, n_test=10, seed=2)
    assert isinstance(a, Task)
    for task in (a, b):
        assert Counter(task.labels("train")) == {0: 4, 1: 4}
        assert Counter(task.labels("dev")) == {0: 4, 1: 4}
        assert len(task.test) == 10
    assert a.train != b.train
    assert a.test == b.test
    assert load_task(str(lmbff), num_classes=2, k_shot=4, n_test=10, seed=1) == a
    assert len(load_task(str(lmbff), num_classes=2, n_test=1000).test) == 100


def test_k_dev_sets_the_dev_size_apart_from_train(lmbff: Path):
    task = load_task(str(lmbff), num_classes=2, k_shot=4, k_dev=10, seed=1)
    assert Counter(task.labels("train")) == {0: 4, 1: 4}
    assert Counter(task.labels("dev")) == {0: 10, 1: 10}
    whole_train = load_task(str(lmbff), num_classes=2, k_dev=3)
    assert len(whole_train.train) == 40 and Counter(whole_train.labels("dev")) == {0: 3, 1: 3}
    with pytest.raises(TaskError, match=r"fewer than k=30; lower k_shot \(k_dev for the dev split\)"):
        load_task(str(lmbff), num_classes=2, k_shot=4, k_dev=30)
    rt = load_task("rotten-tomatoes", num_classes=2, k_shot=4, k_dev=50, n_test=20)
    assert Counter(rt.labels("dev")) == {0: 50, 1: 50} and not set(rt.dev) & set(rt.train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_shot": 0}, r"k_shot=0 is invalid"),
        ({"k_dev": 0}, r"k_dev=0 is invalid"),
        ({"n_test": 0}, r"n_test=0 is invalid"),
    ],
)
def test_load_task_bad_sizes(lmbff: Path, kwargs: dict[str, int], message: str):
    with pytest.raises(TaskError, match=message):
        load_task(str(lmbff), num_classes=2, **kwargs)


def test_load_task_unknown_source(tmp_path: Path):
    with pytest.raises(TaskError, match=r"unknown task source 'sst2'; accepted forms: 'rotten-tomatoes'.*hf:NAME"):
        load_task("sst2", num_classes=2)
    with pytest.raises(TaskError, match=r"path '.*missing' does not exist.*accepted forms"):
        load_task(str(tmp_path / "missing"), num_classes=2)


def test_rotten_tomatoes_needs_k_shot():
    with pytest.raises(TaskError, match=r"k_shot is required; pass e\.g\. k_shot=16"):
        load_task("rotten-tomatoes", num_classes=2)


def test_rotten_tomatoes_asset():
    examples = load_rotten_tomatoes()
    counts = Counter(e.label for e in examples)
    # 7,403 fresh / 5,405 rotten before removing duplicate snippets.
    assert 7300 <= counts[1] <= 7403
    assert 5300 <= counts[0] <= 5405
    assert len({e.text for e in examples}) == len(examples)
    assert all(e.text == e.text.strip() and e.text for e in examples)

    a = load_task("rotten-tomatoes", num_classes=2, k_shot=8, n_test=200, seed=0)
    b = load_task("rotten-tomatoes", num_classes=2, k_shot=8, n_test=200, seed=1)
    assert a.name == "rotten-tomatoes"
    for task in (a, b):
        assert Counter(task.labels("train")) == {0: 8, 1: 8}
        assert Counter(task.labels("dev")) == {0: 8, 1: 8}
        assert set(task.labels("test")) == {0, 1}
        assert len(task.test) == 200
        train, dev, test = set(task.train), set(task.dev), set(task.test)
        assert not (train & dev or train & test or dev & test)
    assert a.test == b.test
    assert a.train != b.train


# --- load_hf (offline: a fake datasets module) ---------------------------------------------------------


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, result: object) -> None:
    def load_dataset(name: str, config: str | None = None) -> object:
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_load_hf_without_datasets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskError, match=r"'glue'.*pip install datasets"):
        load_hf("glue", config="sst2", num_classes=2)


def test_load_hf_hub_unreachable(monkeypatch: pytest.MonkeyPatch):
    _fake_datasets(monkeypatch, ConnectionError("no network"))
    with pytest.raises(TaskError, match=r"'glue' \(config 'sst2'\).*hub may be unreachable.*rotten-tomatoes"):
        load_hf("glue", config="sst2", num_classes=2)


def test_load_hf_missing_column(monkeypatch: pytest.MonkeyPatch):
    _fake_datasets(monkeypatch, {"train": [{"text": "a", "label": 0}]})
    with pytest.raises(TaskError, match=r"no column \['sentence'\]; its columns are \['text', 'label'\]"):
        load_hf("imdb", num_classes=2)


def test_load_task_hf_falls_back_to_validation(monkeypatch: pytest.MonkeyPatch):
    splits = {
        "train": [{"sentence": f"tr{i}", "label": i % 2} for i in range(20)],
        "validation": [{"sentence": f"va{i}", "label": i % 2} for i in range(10)],
        "test": [{"sentence": f"te{i}", "label": -1} for i in range(10)],
    }
    _fake_datasets(monkeypatch, splits)
    task = load_task("hf:glue:sst2", num_classes=2, k_shot=3, seed=0)
    assert task.name == "glue/sst2"
    assert task.texts("test") == [f"va{i}" for i in range(10)]
    assert Counter(task.labels("dev")) == {0: 3, 1: 3}
    assert not set(task.train) & set(task.dev)
    assert all(t.startswith("tr") for t in task.texts("dev"))


# --- verbalizer_ids ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(assets.gpt2_tokenizer_dir()))


def test_verbalizer_ids(gpt2_tokenizer):
    assert verbalizer_ids(gpt2_tokenizer, [" terrible", " great"]) == [7818, 1049]


def test_verbalizer_multi_token_word(gpt2_tokenizer):
    with pytest.raises(TaskError, match=r"' fantastically' splits into \[' fant', 'astically'\].*' great'"):
        verbalizer_ids(gpt2_tokenizer, [" terrible", " fantastically"])


def test_verbalizer_duplicates_and_too_few(gpt2_tokenizer):
    with pytest.raises(TaskError, match=r"repeats \[' great'\]"):
        verbalizer_ids(gpt2_tokenizer, [" great", " great"])
    with pytest.raises(TaskError, match=r"fewer than 2 words"):
        verbalizer_ids(gpt2_tokenizer, [" great"])


# --- files that are not UTF-8 TSV, and splits that cannot train or test a classifier ------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("sentence\tlabel\ngood\t1\ncaf\u00e9\t0\n".encode("latin-1"), r"line 3: byte 0xe9 is not UTF-8 text.*iconv"),
        (b"sentence\tlabel\n\x89PNG\x00\x00\t1\n", r"line 2: a NUL byte; this is a binary"),
        (
            b"sentence\tlabel\n" + b"x" * 200_000 + b"\t1\n",
            r"line 2: field larger than field limit.*without line breaks",
        ),
    ],
    ids=["latin-1", "binary", "200kb-line"],
)
def test_a_file_that_is_not_utf8_tsv_names_its_line(tmp_path: Path, data: bytes, message: str):
    path = tmp_path / "train.tsv"
    path.write_bytes(data)
    with pytest.raises(TaskError, match=message):
        read_tsv(path, num_classes=2)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\ufeffsentence\tlabel\ngood\t1\n".encode())
    assert read_tsv(path, num_classes=2) == [Example("good", 1)]


def test_every_split_needs_every_class(lmbff: Path):
    _write_tsv(lmbff / "train.tsv", [(f"t{i}", 0) for i in range(5)])
    with pytest.raises(TaskError, match=r"train\.tsv has no example of class 1 \(its labels: 0\); every split"):
        load_task(str(lmbff), num_classes=2)
    with pytest.raises(TaskError, match=r"train\.tsv has no example of class 1"):
        load_task(str(lmbff), num_classes=2, k_shot=2)  # before k-shot sampling's "fewer than k"


def test_a_verbalizer_with_more_words_than_classes_is_named(lmbff: Path):
    with pytest.raises(TaskError, match=r"no example of class 2 \(its labels: 0, 1\).*verbalizer: its 3 words"):
        load_task(str(lmbff), num_classes=3)


def test_a_split_of_empty_sentences_is_refused_one_empty_sentence_is_not(lmbff: Path):
    _write_tsv(lmbff / "dev.tsv", [("", 0), ("", 1), (" ", 1)])
    with pytest.raises(TaskError, match=r"dev\.tsv: every sentence is empty"):
        load_task(str(lmbff), num_classes=2)
    _write_tsv(lmbff / "dev.tsv", [("", 0), ("fine", 1)])
    assert load_task(str(lmbff), num_classes=2).texts("dev") == ["", "fine"]


def test_a_test_subset_without_a_class_warns(lmbff: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level("WARNING", logger="objectives.tasks"):
        load_task(str(lmbff), num_classes=2, n_test=1)
    assert "test accuracy is then one-sided: raise n_test" in caplog.text
