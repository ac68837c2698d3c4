"""Greedy generation on the host: the PyTorch reference a device's tokens are compared with, the numpy loop over
any cache-graph step, and the comparison that goes into summary.json (LM_CONTRACT.md, issue 24 items 5-6).

The device runs its own copy of the loop (targets/runner/bench.py ``greedy``: the runner is one self-contained
file and imports nothing from here, nor this module from it); tests/targets/test_generation.py holds the two to
the same tokens. Float artifacts must reproduce PyTorch's greedy tokens exactly; weight-only INT8/INT4 ones may
legitimately diverge once a near-tie flips, so for them the agreement is recorded, not judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from targets.errors import ConfigError

FLOAT_PRECISIONS = ("fp32", "fp16")
Step = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


def greedy_torch(model: Any, prompt_ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """PyTorch's greedy tokens, int64 [n, new_tokens], for ``prompt_ids`` int64 [n, PROMPT_LEN] (or one [PROMPT_LEN]
    prompt): per prompt one ``forward_with_cache`` over the prompt with no past, then one call per new token with
    the returned cache -- the calls the exported graph makes, so the reference is the model, not another program."""
    import torch

    prompts = np.atleast_2d(np.asarray(prompt_ids, dtype=np.int64))
    check_positions(prompts.shape[1], new_tokens, int(getattr(model, "max_positions", 1 << 30)))
    model = model.eval()
    out = np.empty((len(prompts), new_tokens), dtype=np.int64)
    with torch.no_grad():
        for n, prompt in enumerate(prompts):
            res = model.forward_with_cache(torch.from_numpy(prompt[None, :].copy()))
            for t in range(new_tokens):
                token = int(res[0][0, -1].argmax())
                out[n, t] = token
                if t + 1 < new_tokens:
                    res = model.forward_with_cache(torch.tensor([[token]]), *res[1:])
    return out


def greedy_numpy(step: Step, prompt_ids: np.ndarray, new_tokens: int, empty_past: list[np.ndarray]) -> np.ndarray:
    """The same greedy loop over any runtime: ``step(ids [1, S], past) -> (logits [1, S, V], presents)``, started
    from ``empty_past`` (zero-size [1, H_i, 0, D_i] arrays, ``empty_cache``). int64 [n, new_tokens]."""
    prompts = np.atleast_2d(np.asarray(prompt_ids, dtype=np.int64))
    out = np.empty((len(prompts), new_tokens), dtype=np.int64)
    for n, prompt in enumerate(prompts):
        logits, past = step(prompt[None, :], list(empty_past))
        for t in range(new_tokens):
            out[n, t] = int(np.argmax(logits[0, -1]))
            if t + 1 < new_tokens:
                logits, past = step(np.array([[out[n, t]]], dtype=np.int64), past)
    return out


def empty_cache(generation: dict[str, Any], batch: int = 1) -> list[np.ndarray]:
    """The empty past for an artifact's ``"generation"`` metadata: ``k_0, v_0, k_1, ...`` as [B, H_i, 0, D_i]."""
    past = []
    for h, d in zip(generation["heads"], generation["head_dim"], strict=True):
        past += [np.zeros((batch, h, 0, d), np.float32)] * 2
    return past


def check_positions(prompt_len: int, new_tokens: int, max_positions: int) -> None:
    """The last generated token sits at position prompt_len + new_tokens - 2 of the cache; the table must hold it."""
    if prompt_len < 1 or new_tokens < 2:
        raise ConfigError(f"generate: prompt_len {prompt_len}, new_tokens {new_tokens}",
                          hint="prompt_len >= 1 and new_tokens >= 2 (one prefill, at least one decode step)")
    if prompt_len + new_tokens - 1 > max_positions:
        raise ConfigError(f"generate: prompt_len {prompt_len} + new_tokens {new_tokens} needs "
                          f"{prompt_len + new_tokens - 1} positions, the model has {max_positions}",
                          hint="lower task.generate's prompt_len or new_tokens")


def write_prompts(path: Path | str, prompt_ids: np.ndarray) -> Path:
    """The runner's ``--prompts`` file: ``prompt_ids`` int64 [n, PROMPT_LEN] (written atomically)."""
    import io

    from targets.jsonio import atomic_write_bytes

    ids = np.asarray(prompt_ids)
    if ids.ndim != 2 or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"prompts are {ids.dtype} {list(ids.shape)}: give integer token ids [n, PROMPT_LEN]")
    buf = io.BytesIO()
    np.savez(buf, prompt_ids=ids.astype(np.int64))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def compare_greedy(device_tokens: Sequence[Sequence[int]] | np.ndarray, torch_tokens: np.ndarray) -> dict[str, Any]:
    """Token-for-token comparison: ``greedy_matches_torch`` (every prompt identical), ``greedy_agreement`` (fraction
    of positions equal) and ``greedy_prefix`` (mean fraction of each prompt's tokens before the first divergence --
    after it the two continue different texts, so position agreement alone flatters or punishes by chance)."""
    ref = np.asarray(torch_tokens, dtype=np.int64)
    try:
        got = np.asarray(device_tokens, dtype=np.int64)
    except (TypeError, ValueError):
        got = np.zeros((0,), np.int64)
    if got.shape != ref.shape:
        return {"greedy_matches_torch": False, "greedy_agreement": 0.0, "greedy_prefix": 0.0,
                "greedy_mismatch": f"the device returned tokens of shape {list(got.shape)}, expected "
                                   f"{list(ref.shape)}"}
    same = got == ref
    prefix = [int(np.argmin(row)) if not row.all() else len(row) for row in same]
    return {"greedy_matches_torch": bool(same.all()), "greedy_agreement": round(float(same.mean()), 4),
            "greedy_prefix": round(float(np.mean(prefix)) / ref.shape[1], 4)}


def generation_entry(record: dict[str, Any], torch_tokens: np.ndarray, precision: str) -> tuple[dict[str, Any],
                                                                                                 list[str]]:
    """The summary.json ``"generation"`` entry for one artifact (the runner's record minus its tokens and device
    state, plus the comparison with PyTorch) and the problems that fail the artifact: a float artifact (fp32, fp16)
    whose greedy tokens differ from PyTorch's is a broken export; INT8/INT4 record their agreement only."""
    entry = {k: v for k, v in record.items() if k not in ("tokens", "state")}
    cmp = compare_greedy(record.get("tokens") or [], torch_tokens)
    entry.update(cmp)
    problems = []
    if precision in FLOAT_PRECISIONS and not cmp["greedy_matches_torch"]:
        problems.append(cmp.get("greedy_mismatch") or
                        f"greedy tokens differ from PyTorch's (agreement {cmp['greedy_agreement']:.1%}, first "
                        f"divergence after {cmp['greedy_prefix']:.1%} of the tokens on average): a float artifact "
                        "must decode as its model does")
    return entry, problems
