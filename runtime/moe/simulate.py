"""Token-level traffic simulation calibrated to real per-expert loads.

No real token-level (co-activation) trace of DeepSeek-V3 is reachable offline
(research/moe.md §2), so tokens come from a synthetic router with DeepSeek-V3's structure,
calibrated so each expert's share of routed tokens matches the recorded load of that layer
(the approach of research/moe.md §1.3 "token-level cross-node traffic"):

* each token has a latent topic; its score for expert ``e`` is
  ``bias_e + topic_strength * affinity[topic, e] + gumbel noise``;
* group-limited routing: a group's score is the sum of its two best expert scores, the token
  keeps its ``top_groups`` best groups, then its ``top_k`` best experts inside them;
* ``bias`` is fitted by a few multiplicative updates until the expert frequencies match the
  target loads (correlation is reported as ``calibration_corr``).

Token sources are uniform over devices; replicas are chosen by a :class:`routing.Router` per
source device under the named :class:`routing.DispatchRule`, exactly as each rank's dispatcher
chooses them (``even`` and ``shares``: per-batch quotas of that device's own pairs). Figures
are relative (synthetic co-activation), not a trace replay.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .routing import DispatchRule, LayerReplicas, Router


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    num_groups: int = 8  # expert groups (contiguous id blocks)
    top_groups: int = 4  # groups a token may use (DeepSeek-V3: 4 of 8)
    top_k: int = 8  # experts per token
    num_topics: int = 16  # latent topics that correlate a token's experts
    topic_strength: float = 1.0  # weight of the topic affinity against the noise
    calibration_steps: int = 40


def group_limited_topk(scores: np.ndarray, cfg: RouterConfig) -> np.ndarray:
    """``[tokens, top_k]`` expert ids chosen from ``scores [tokens, experts]``."""
    tokens, experts = scores.shape
    gs = experts // cfg.num_groups
    grouped = scores.reshape(tokens, cfg.num_groups, gs)
    top2 = -np.partition(-grouped, 1, axis=2)[:, :, :2].sum(axis=2)
    keep = np.argpartition(-top2, cfg.top_groups - 1, axis=1)[:, : cfg.top_groups]
    mask = np.zeros((tokens, cfg.num_groups), dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    masked = np.where(np.repeat(mask, gs, axis=1), scores, -np.inf)
    return np.argpartition(-masked, cfg.top_k - 1, axis=1)[:, : cfg.top_k]


@dataclasses.dataclass(frozen=True)
class CalibratedRouter:
    bias: np.ndarray  # [experts]
    affinity: np.ndarray  # [topics, experts]
    cfg: RouterConfig
    calibration_corr: float  # correlation of simulated and target expert frequencies

    @classmethod
    def fit(
        cls, load: np.ndarray, cfg: RouterConfig = RouterConfig(), tokens: int = 4096, seed: int = 0
    ) -> "CalibratedRouter":
        rng = np.random.default_rng(seed)
        load = np.asarray(load, dtype=np.float64)
        experts = len(load)
        target = load / max(load.sum(), 1e-300)
        affinity = rng.normal(size=(cfg.num_topics, experts))
        topic = rng.integers(cfg.num_topics, size=tokens)
        noise = rng.gumbel(size=(tokens, experts))
        base = cfg.topic_strength * affinity[topic] + noise
        bias = np.log(np.maximum(target, 1e-6))
        for _ in range(cfg.calibration_steps):
            ids = group_limited_topk(base + bias, cfg)
            freq = np.bincount(ids.ravel(), minlength=experts) / ids.size
            bias += 0.7 * (np.log(np.maximum(target, 1e-6)) - np.log(np.maximum(freq, 0.25 / ids.size)))
        ids = group_limited_topk(base + bias, cfg)
        freq = np.bincount(ids.ravel(), minlength=experts) / ids.size
        corr = float(np.corrcoef(freq, target)[0, 1])
        return cls(bias=bias, affinity=affinity, cfg=cfg, calibration_corr=corr)

    def sample(self, tokens: int, rng: np.random.Generator) -> np.ndarray:
        experts = len(self.bias)
        topic = rng.integers(self.cfg.num_topics, size=tokens)
        scores = self.bias + self.cfg.topic_strength * self.affinity[topic] + rng.gumbel(size=(tokens, experts))
        return group_limited_topk(scores, self.cfg)


@dataclasses.dataclass(frozen=True)
class TrafficStats:
    rule: str  # the dispatch rule every figure below was measured under
    remote_nodes_per_token: float  # distinct remote nodes a token is sent to (DeepEP sends once per node)
    nodes_per_token: float  # distinct nodes whose experts a token uses, its own included
    remote_pair_fraction: float  # (token, expert) pairs served on another node
    dispatch_balancedness: float  # token level: sum_l mean / sum_l max of (token, expert) pairs per device
    calibration_corr: float  # min over layers of the router calibration correlation

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def simulate_traffic(
    loads: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    slot_share: np.ndarray | None = None,
    layers: list[int] | None = None,
    tokens: int = 8192,
    cfg: RouterConfig = RouterConfig(),
    seed: int = 0,
    token_cache: dict | None = None,
    rule: DispatchRule | str | None = None,
) -> TrafficStats:
    """Route ``tokens`` synthetic tokens per layer (calibrated to ``loads[layer]``) through
    the placement under ``rule`` (default: ``shares`` when ``slot_share`` is given, else
    ``even``) and count inter-node sends and pairs per device. ``token_cache`` (a dict, one per
    load matrix) keeps the sampled tokens so several placements are compared on the same tokens."""
    if rule is None:
        rule = DispatchRule.EVEN if slot_share is None else DispatchRule.SHARES
    rule = DispatchRule(rule)
    loads = np.asarray(loads, dtype=np.float64)
    phy2log = np.asarray(phy2log)
    slot_device = np.asarray(slot_device)
    device_node = np.asarray(device_node)
    num_devices = len(device_node)
    layers = list(range(loads.shape[0])) if layers is None else layers
    remote_nodes, nodes, remote_pairs, means, maxes, corrs = [], [], [], [], [], []
    for layer in layers:
        key = (layer, tokens, seed)
        if token_cache is not None and key in token_cache:
            ids, u, corr = token_cache[key]
        else:
            router = CalibratedRouter.fit(loads[layer], cfg, seed=seed + layer)
            rng0 = np.random.default_rng(seed + 1000 + layer)
            ids, u, corr = router.sample(tokens, rng0), rng0.random(tokens), router.calibration_corr
            if token_cache is not None:
                token_cache[key] = (ids, u, corr)
        corrs.append(corr)
        src = np.minimum((u * num_devices).astype(np.int64), num_devices - 1)
        rep = LayerReplicas.build(
            phy2log[layer], slot_device, device_node, loads.shape[1], None if slot_share is None else slot_share[layer]
        )
        slot = np.empty_like(ids)
        if rule is DispatchRule.LOCAL_FIRST:
            slot[:] = Router(rep, rule, seed=seed + 2000 + layer).route(ids, src)
        else:
            # every source device splits its own pairs, as every rank's dispatcher does
            by_src = np.argsort(src, kind="stable")
            bounds = np.searchsorted(src[by_src], np.arange(num_devices + 1))
            for d in range(num_devices):
                mine = by_src[bounds[d] : bounds[d + 1]]
                if len(mine):
                    slot[mine] = Router(rep, rule).route(ids[mine], src[mine])
        node = device_node[slot_device[slot]]
        src_node = device_node[src][:, None]
        used = np.zeros((tokens, int(device_node.max()) + 1), dtype=bool)
        np.put_along_axis(used, node, True, axis=1)
        remote = used.copy()
        remote[np.arange(tokens), src_node[:, 0]] = False
        remote_nodes.append(remote.sum(axis=1).mean())
        nodes.append(used.sum(axis=1).mean())
        remote_pairs.append((node != src_node).mean())
        per_dev = np.bincount(slot_device[slot].ravel(), minlength=num_devices)
        means.append(per_dev.mean())
        maxes.append(per_dev.max())
    return TrafficStats(
        rule=rule.value,
        remote_nodes_per_token=float(np.mean(remote_nodes)),
        nodes_per_token=float(np.mean(nodes)),
        remote_pair_fraction=float(np.mean(remote_pairs)),
        dispatch_balancedness=float(np.sum(means) / np.sum(maxes)),
        calibration_corr=float(np.min(corrs)),
    )
