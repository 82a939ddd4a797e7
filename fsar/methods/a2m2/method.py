"""A2M2-Net: adaptively aligned multi-scale second-order moments, registered as ``a2m2``.

Per video (``encode``, run once per video at evaluation; ``A2M2Encoding``): the M2 block's candidates,
the A2 module's candidate weight logits, the frames the optional frame-level metric compares, the
video's weighted mean candidate (its embedding for the text branch) and the candidates' window times.
Per episode (``head``, from a distance per (query, support) pair: a declared pair-table method):

    distance(q, c) = mean over c's support videos of [(1 − fusion) · OT(q, s) + fusion · frame_metric(q, s)]
                     + text_weight · (1 − cos(video(q), prototype_c ⊕ text_c))      (text branch, when on)
    logits = −distance · scale

With the text branch on, the store's class-name embeddings (CLIP text tower) are projected into the
candidate space and added to each class prototype, and in training a video–text cross-entropy over the
episode's classes (support videos, and queries through the training-only labels) is returned as the
auxiliary loss ``text_ce``, weighted by ``text_loss``.

What the paper states and what is reconstructed: see ``moments`` and ``alignment``, and DESIGN
"A2M2-Net". Every reconstructed choice is a knob of ``A2M2Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.a2m2.alignment import CandidateWeights, motion_summary, transport_distance, transport_plans
from fsar.methods.a2m2.moments import M2Block, Scale
from fsar.methods.base import Explanation, PairTableMethod, Supervision
from fsar.methods.parts import LogitScale, class_average, class_prototypes
from fsar.methods.registry import Configuration, register_method
from fsar.ops.frame_distance import mean_hausdorff, pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance


class A2M2Encoding(NamedTuple):
    """What A2M2 keeps of one video (leading axes ``(...)`` shared)."""

    candidates: Tensor  # (..., K, e) unit candidate descriptors of the M2 block
    weight_logits: Tensor  # (..., K) the A2 module's candidate weight logits
    frames: Tensor  # (..., T, F) the fused frame metric's frame vectors; (..., T, 0) without fusion
    embedding: Tensor  # (..., e) weighted mean candidate: the video's vector for the text branch
    times: Tensor  # (..., K) each candidate's window centre in [0, 1] (read by order_prior)


@dataclass
class A2M2Config:
    """Knobs of A2M2 ([recon] = our reconstruction; the paper does not publish it)."""

    reduce_dim: int = 15  # d: channels after the 1x1 reduction [recon; paper range 64-128]; with motion and position each moment is (2d + 2)^2 = 32x32, whose batched products run 1.5x faster than 34x34
    moment_inputs: list[str] = field(default_factory=lambda: ["features", "motion", "position"])  # per-patch vectors the moments describe: features, motion (temporal difference: direction), position (row, col: where) [recon]
    reduce_norm: Literal["layer", "batch"] = "layer"  # normalisation after the reduction: per-token LayerNorm (each video alone) or iSQRT-COV's BatchNorm (couples a training batch's videos; see moments) [recon]
    scales: list[int] = field(default_factory=lambda: [4, 8])  # temporal window lengths in frames: halves and the whole of an 8-frame clip [recon]
    spatial_scales: list[int] = field(default_factory=lambda: [0])  # patch-block sides (must divide g); 0 = whole grid [recon]
    ns_iters: int = 2  # Newton-Schulz iterations of the matrix square root (iSQRT: 3-5; 2 measured as accurate here and 1.4x faster)
    embed_dim: int = 128  # e: candidate size after the learned projection of the upper triangle
    temporal_centre: bool = True  # subtract each video's mean over time per patch before the moments [recon]
    time_encoding: bool = True  # add an encoding of each window's time to its candidate (order-aware transport) [recon]
    marginals: Literal["learned", "uniform"] = "learned"  # candidate weights: motion-guided MLP, or uniform
    weight_hidden: int = 64  # hidden units of the candidate-weight MLP
    ot_epsilon: float = 0.05  # entropic regularisation of the transport (costs lie in [0, 2])
    ot_iters: int = 30  # Sinkhorn iterations
    ot_backend: Literal["scaling", "torch", "pot"] = "scaling"  # Sinkhorn: multiplicative (fast), log-domain, or POT's batched solver
    order_prior: float = 0.0  # transport cost + order_prior * |t_query - t_support| of the candidates' window centres (in [0, 1]): prefer temporally corresponding windows [recon]
    fusion: float = 0.0  # weight of the frame-level metric in the distance: (1 - fusion) * OT + fusion * frame
    frame_metric: Literal["otam", "bimhm"] = "otam"  # frame-level metric fused with the transport distance
    frame_gamma: float = 0.1  # soft-DTW temperature of the OTAM frame metric
    frame_dim: int = 32  # frame metric: per-patch width of its own 1x1 projection of the (centred) grid, flattened per frame; 0 = reuse the moment reduction
    text: bool = True  # use class-name text embeddings when the feature store has them
    text_weight: float = 0.5  # weight of the text-fused prototype distance
    text_loss: float = 0.1  # weight of the video-text cross-entropy (training only)
    text_temperature: float = 0.1  # temperature of the video-text cross-entropy's cosine logits
    temperature: float = 0.1  # logits = -distance / temperature at the start
    learn_scale: bool = True  # train the logit scale (starts at 1/temperature)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"a2m2: {what}")

        need(self.reduce_dim >= 2, f"reduce_dim must be >= 2, got {self.reduce_dim}")
        need(self.embed_dim >= 1, f"embed_dim must be >= 1, got {self.embed_dim}")
        need(bool(self.scales) and all(int(s) >= 1 for s in self.scales), f"scales must be frame counts >= 1, got {self.scales}")
        need(len(set(self.scales)) == len(self.scales), f"scales must not repeat, got {self.scales}")
        need(bool(self.spatial_scales) and all(int(p) >= 0 for p in self.spatial_scales),
             f"spatial_scales must be block sides >= 0 (0 = whole grid), got {self.spatial_scales}")
        need(len(set(self.spatial_scales)) == len(self.spatial_scales), f"spatial_scales must not repeat, got {self.spatial_scales}")
        need(self.ns_iters >= 1, f"ns_iters must be >= 1, got {self.ns_iters}")
        need(self.weight_hidden >= 1, f"weight_hidden must be >= 1, got {self.weight_hidden}")
        need(self.ot_epsilon > 0, f"ot_epsilon must be > 0, got {self.ot_epsilon}")
        need(self.ot_iters >= 1, f"ot_iters must be >= 1, got {self.ot_iters}")
        need(self.order_prior >= 0, f"order_prior must be >= 0, got {self.order_prior}")
        need(self.frame_dim >= 0, f"frame_dim must be >= 0, got {self.frame_dim}")
        need(bool(self.moment_inputs) and set(self.moment_inputs) <= {"features", "motion", "position"}
             and len(set(self.moment_inputs)) == len(self.moment_inputs),
             f"moment_inputs must be distinct names among features, motion, position, got {self.moment_inputs}")
        need(0.0 <= self.fusion <= 1.0, f"fusion must lie in [0, 1], got {self.fusion}")
        need(self.frame_gamma >= 0, f"frame_gamma must be >= 0, got {self.frame_gamma}")
        need(self.text_weight >= 0 and self.text_loss >= 0, "text_weight and text_loss must be >= 0")
        need(self.text_temperature > 0 and self.temperature > 0, "temperatures must be > 0")
        need(self.reduce_norm in ("layer", "batch"), f"reduce_norm must be 'layer' or 'batch', got {self.reduce_norm!r}")
        need(self.marginals in ("learned", "uniform"), f"marginals must be 'learned' or 'uniform', got {self.marginals!r}")
        need(self.ot_backend in ("scaling", "torch", "pot"),
             f"ot_backend must be 'scaling', 'torch' or 'pot', got {self.ot_backend!r}")
        need(self.frame_metric in ("otam", "bimhm"), f"frame_metric must be 'otam' or 'bimhm', got {self.frame_metric!r}")


A2M2_CONFIGURATIONS = {
    "paper": Configuration(
        {"moment_inputs": ["features"], "temporal_centre": False, "time_encoding": False, "fusion": 0.5},
        "as the paper describes it: second-order moments of the features at several temporal scales, candidate "
        "weights guided by the video's motion, entropic OT, fused with the local frame metric (global video context "
        "and local frame similarity); sizes, scales and the fusion weight 0.5 are [recon]"),
    "fsar": Configuration(
        {"moment_inputs": ["features", "motion", "position"], "temporal_centre": True, "time_encoding": True,
         "fusion": 0.5},
        "the paper's configuration plus fsar's additions",
        {"moment_inputs": "moments of motion (temporal difference) and position (row, col) beside the features: "
                          "-10 and -5 points without them on the demo store (docs/methods.md, A2M2 ablation)",
         "temporal_centre": "each video's temporal mean subtracted per patch before the moments: motion, not appearance",
         "time_encoding": "each window's time added to its candidate, so the transport can prefer corresponding "
                          "windows"}),
}


@register_method(
    "a2m2", config=A2M2Config, input_kind="patches",
    description="A2M2-Net: multi-scale second-order moments aligned by motion-weighted optimal transport (+ text)",
    configurations=A2M2_CONFIGURATIONS, default_configuration="paper",
)
class A2M2(PairTableMethod):
    """M2 block → A2 weights → batched entropic OT between candidate sets, optional frame metric and text."""

    pair_table_reads = ("embedding",)  # logits_from_pairs reads only the video embeddings (the text term)

    def __init__(self, config: A2M2Config, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        scales = [Scale(int(s), int(p)) for s in config.scales for p in config.spatial_scales]
        self.m2 = M2Block(feature_dim=feature_dim, reduce_dim=config.reduce_dim, embed_dim=config.embed_dim,
                          scales=scales, ns_iterations=config.ns_iters, temporal_centre=config.temporal_centre,
                          time_encoding=config.time_encoding, norm=config.reduce_norm,
                          inputs=tuple(config.moment_inputs))
        self.weights = CandidateWeights(embed_dim=config.embed_dim, motion_dim=config.reduce_dim,
                                        hidden=config.weight_hidden, learned=config.marginals == "learned")
        # Built only when the data has class text and a term reads it: a projection that never sees text would
        # get no gradient (which DDP refuses).
        reads_text = config.text and bool(text_dim) and (config.text_weight > 0 or config.text_loss > 0)
        self.text_projection = nn.Linear(text_dim, config.embed_dim) if reads_text else None
        # The frame metric's own view of the grid: a per-patch projection, flattened per frame (where things
        # are stays in the vector, as in OTAM's grid view). Built only when the metric is fused in.
        self.frame_projection = nn.Linear(feature_dim, config.frame_dim) if config.fusion > 0 and config.frame_dim else None
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    @property
    def uses_text(self) -> bool:
        return self.text_projection is not None

    def encode(self, videos: Tensor) -> A2M2Encoding:
        """``(..., T, g, g, D)`` → the video's ``A2M2Encoding``."""
        candidates, reduced = self.m2(videos)
        logits = self.weights(candidates, motion_summary(reduced))
        embedding = (torch.softmax(logits, dim=-1)[..., None] * candidates).sum(dim=-2)
        # The transport compares candidates by cosine: unit vectors once here, not once per pair.
        candidates = nn.functional.normalize(candidates, dim=-1, eps=1e-8)
        # Only the frame-level metric reads frames; without fusion an empty tensor keeps the tuple's shape.
        if self.config.fusion == 0:
            frames = reduced.new_zeros(*reduced.shape[:-3], 0)
        elif self.frame_projection is None:
            frames = reduced.flatten(-3)
        else:
            grid = videos - videos.mean(dim=-4, keepdim=True) if self.config.temporal_centre else videos
            frames = self.frame_projection(grid).flatten(-3)
        # Each candidate's window centre in [0, 1] (the same for every video of a split; read by order_prior).
        times = self.m2.candidate_times(videos.shape[-4], videos.shape[-3], device=videos.device)
        return A2M2Encoding(candidates, logits, frames, embedding, times.expand(*logits.shape))

    def _order_cost(self, support: A2M2Encoding, query: A2M2Encoding) -> Tensor | None:
        """|t_q − t_s| of the candidates' window centres (the same for every pair) times ``order_prior``; None: off."""
        if self.config.order_prior <= 0:
            return None
        k_q, k_s = query.candidates.shape[-2], support.candidates.shape[-2]
        q_times, s_times = query.times.reshape(-1, k_q)[0], support.times.reshape(-1, k_s)[0]
        return self.config.order_prior * (q_times[:, None] - s_times[None, :]).abs()

    def pair_distance(self, support: A2M2Encoding, query: A2M2Encoding) -> Tensor:
        """Distance of every (query, support) pair: encoded ``(B, N_s, ...)``, ``(B, N_q, ...)`` → ``(B, N_q, N_s)``."""
        c = self.config
        dist = transport_distance(query.candidates, query.weight_logits, support.candidates, support.weight_logits,
                                  epsilon=c.ot_epsilon, iterations=c.ot_iters, backend=c.ot_backend, unit=True,
                                  extra_cost=self._order_cost(support, query), extra_spread=c.order_prior)
        if c.fusion > 0:
            frame_dist = pairwise_frame_distance(query.frames, support.frames)
            frame = (otam_distance(frame_dist, c.frame_gamma) if c.frame_metric == "otam"
                     else mean_hausdorff(frame_dist))
            dist = (1.0 - c.fusion) * dist + c.fusion * frame
        return dist

    def explain(self, support: A2M2Encoding, query: A2M2Encoding, *, query_video: Tensor | None = None) -> Explanation:
        """The transport plan between the query's and the support's temporal candidates (one video each), items
        placed at their windows' centres."""
        c = self.config
        one = [t[None, None] for t in (query.candidates, query.weight_logits, support.candidates,
                                       support.weight_logits)]
        plan, _ = transport_plans(*one, epsilon=c.ot_epsilon, iterations=c.ot_iters, backend=c.ot_backend, unit=True,
                                  extra_cost=self._order_cost(support, query), extra_spread=c.order_prior)
        return Explanation("transport plan", plan[0].float(), query.times[:, None].float(),
                           support.times[:, None].float())

    def logits_from_pairs(self, distance: Tensor, support: A2M2Encoding, support_labels: Tensor, query: A2M2Encoding,
                          way: int, *, class_text: Tensor | None = None) -> Tensor:
        """Pair distances ``(B, N_q, N_s)`` → logits ``(B, N_q, way)``: class mean, plus the text-fused prototype term."""
        distance = class_average(distance, support_labels, way)
        text = self._text(class_text)
        if text is not None:
            s_emb = nn.functional.normalize(support.embedding, dim=-1)
            q_emb = nn.functional.normalize(query.embedding, dim=-1)
            prototypes = nn.functional.normalize(class_prototypes(s_emb, support_labels, way) + text, dim=-1)
            distance = distance + self.config.text_weight * (1.0 - q_emb @ prototypes.transpose(-1, -2))
        return self.scale(distance)

    def auxiliary_losses(self, support: A2M2Encoding, support_labels: Tensor, query: A2M2Encoding, way: int, *,
                         class_text: Tensor | None = None,
                         supervision: Supervision | None = None) -> dict[str, Tensor]:
        """In training with text: ``text_ce``, the video–text cross-entropy over the episode's classes
        (support videos, and the queries when their training labels are given)."""
        text = self._text(class_text)
        if text is None or supervision is None or self.config.text_loss == 0:
            return {}
        embeddings, labels = support.embedding, support_labels
        if supervision.query_labels is not None:
            embeddings = torch.cat([support.embedding, query.embedding], dim=1)
            labels = torch.cat([support_labels, supervision.query_labels.to(support_labels.device)], dim=1)
        text_logits = nn.functional.normalize(embeddings, dim=-1) @ text.transpose(-1, -2) / self.config.text_temperature
        return {"text_ce": self.config.text_loss * nn.functional.cross_entropy(text_logits.reshape(-1, way),
                                                                               labels.reshape(-1))}

    def _text(self, class_text: Tensor | None) -> Tensor | None:
        """Class-name embeddings ``(B, way, E)`` projected and normalised → ``(B, way, e)``; None when off."""
        if class_text is None or self.text_projection is None:
            return None
        return nn.functional.normalize(self.text_projection(class_text.to(self.text_projection.weight.dtype)), dim=-1)
