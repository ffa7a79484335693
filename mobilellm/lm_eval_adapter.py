"""lm-evaluation-harness adapter: lm-eval's own tasks run on a MobileLLM, registered as ``mobilellm``.

Importing this module imports ``lm_eval`` (an optional extra) and registers the model. Use it as
``lm_eval.simple_evaluate(model=MobileLLMEval(model, tokenizer), …)``, or by name with
``model="mobilellm", model_args="pretrained=DIR_OR_HUB_ID"`` (see ``export.load_pretrained``).
"""

from __future__ import annotations

import importlib.util
import logging
import os

if importlib.util.find_spec("lm_eval") is None:
    raise ImportError("lm-eval is not installed: pip install 'lm-eval>=0.4' (or the package's [eval] extra)")

# lm-eval loads its own models only into an empty registry: load them first, or adding ours hides them.
import lm_eval.models  # noqa: F401
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ._common import eval_mode
from ._tqdm import tqdm
from .accounting import param_count
from .evaluate import _model_max_len, encode_pair, score_requests
from .model import MobileLLM
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


@register_model("mobilellm")
class MobileLLMEval(LM):
    """A MobileLLM and its tokenizer behind lm-eval's ``LM`` interface (loglikelihood, rolling, generate)."""

    def __init__(
        self,
        model: MobileLLM | None = None,
        tokenizer: Tokenizer | str | os.PathLike | None = None,
        pretrained: str | os.PathLike | None = None,
        batch_size: int | str | None = 32,
        device: str | None = None,
        max_gen_toks: int = 256,
        **_ignored,
    ) -> None:
        super().__init__()
        if isinstance(tokenizer, (str, os.PathLike)):  # a .model path, as --model_args give it
            tokenizer = Tokenizer(tokenizer)
        if model is None:
            if pretrained is None:
                raise ValueError(
                    "give a model and tokenizer, or pretrained=DIR_OR_HUB_ID (a trainer checkpoint, "
                    "a save_pretrained folder, or a released MobileLLM)"
                )
            from .export import load_pretrained

            model, found = load_pretrained(pretrained, device=device or "auto")
            tokenizer = tokenizer or found
        elif device is not None:
            model = model.to(device)
        if tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer= (a data.Tokenizer or a SentencePiece .model path)")
        self.model, self.tokenizer = model, tokenizer
        # lm-eval passes batch_size as a string from the command line, or "auto"
        self.batch_size = 32 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
        self.max_gen_toks = max_gen_toks

    @property
    def max_length(self) -> int:
        """The model's context window."""
        return _model_max_len(self.model)

    @property
    def eot_token_id(self) -> int:
        """End-of-text id: our EOS, also the prefix of an empty context."""
        return self.tokenizer.eos_id

    @property
    def tokenizer_name(self) -> str:
        """A name for lm-eval's request cache."""
        return f"mobilellm-sp-{self.tokenizer.fingerprint[:12]}"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(context, continuation) -> (log-prob of the continuation, whether greedy decoding gives it)."""
        pairs = [encode_pair(self.tokenizer, *req.args[:2]) for req in requests]
        return score_requests(
            self.model, pairs, batch_size=self.batch_size, progress=not disable_tqdm, desc="loglikelihood"
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-prob of each whole string after an EOS prefix, in disjoint windows of the model's length."""
        windows, owner = [], []
        for k, req in enumerate(requests):
            ids = list(self.tokenizer.encode(req.args[0]))
            for w in get_rolling_token_windows(ids, self.eot_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(k)
        scores = score_requests(
            self.model, windows, batch_size=self.batch_size, progress=not disable_tqdm, desc="loglikelihood_rolling"
        )
        totals = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, scores, strict=True):
            totals[k] += ll
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first ``until`` string (or EOS)."""
        out = []
        warned = False
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if (kwargs.get("do_sample") or kwargs.get("temperature", 0) > 0) and not warned:
                log.warning("mobilellm adapter decodes greedily; ignoring sampling settings %s", kwargs)
                warned = True
            out.append(self._greedy(context, until, max_new))
        return out

    def _greedy(self, context: str, until: list[str], max_new: int, chunk: int = 32) -> str:
        eos, L = self.eot_token_id, self.max_length
        max_new = max(0, min(max_new, L - 1))
        # Left-truncate so prompt + new tokens fit the window (lm-eval's HF model does the same).
        prompt = (list(self.tokenizer.encode(context)) or [eos])[-(L - max_new) :]
        device = next(self.model.parameters()).device
        new: list[int] = []
        with eval_mode(self.model):
            # In chunks, so a stop string ends decoding early; each chunk re-reads the prompt.
            while len(new) < max_new:
                ids = torch.tensor([prompt + new], dtype=torch.long, device=device)
                step = min(chunk, max_new - len(new))
                got = self.model.generate(ids, step, eos_id=eos)[0, ids.shape[1] :].tolist()
                if eos in got:
                    new += got[: got.index(eos)]
                    break
                new += got
                if until and any(u in self.tokenizer.decode(new) for u in until):
                    break
        text = self.tokenizer.decode(new)
        for u in until:
            if u:
                text = text.split(u)[0]
        return text

    def get_model_info(self) -> dict:
        """Model facts for lm-eval's results header."""
        n = param_count(self.model.cfg)["total"]
        return {"model_num_parameters": n, "model_dtype": str(next(self.model.parameters()).dtype)}


def register_lm_eval() -> type:
    """The ``mobilellm`` model class, registered with lm-evaluation-harness on this module's import."""
    return MobileLLMEval
