"""The PreLAR world model (PreLAR Eq. 2–3), its ablations and APV's action-free and stacked models.

One model, switched by `config.Model`:
  PreLAR                   defaults: ã_t ~ q(ã_t | o_t, o_{t+1}) (rsample), action KL, consistency loss
  PreLAR w/o CL            use_consistency=False
  PreLAR w/o CL & AL       use_consistency=False, use_action_kl=False: the latent action is deterministic
                           (the posterior mean), and Δã in the consistency loss is the L2 distance (Eq. 6)
  APV (action-free)        action_free=True: no inverse dynamics, an RSSM without action input (APV Eq. 1–2)
  true actions             true_actions=True: the clip's true action a_t in ã_t's place, no inverse dynamics
                           (a yardstick from labels, not in the papers: what the same loop does given actions)
`StackedWorldModel` puts APV's action-conditional RSSM on a pre-trained action-free model (APV Eq. 3–4).

Time alignment: the inverse dynamics encoder gives ã_t from (o_t, o_{t+1}) for t = 0..T−2; the RSSM's
action input at step t is ã_{t−1}, so a zero action is prepended at t = 0 (as the reference code).

Shape legend: B batch, T time, E embedding, A latent action, F features (deter + stoch·classes).
Frames are uint8 [B, T, 3, 64, 64]; images are float [B, T, 3, 64, 64] in [−0.5, 0.5].
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from prelar import losses
from prelar.config import ConfigError, Model
from prelar.nets import RSSM, InverseDynamics, ResNetDecoder, ResNetEncoder
from prelar.nets.rssm import State


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode (BatchNorm running statistics) and no gradient, restoring the previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def check_action_dims(dims: int, cfg: Model) -> None:
    """A ConfigError unless true actions of `dims` fit the RSSM's action input (`model.latent_action_dim`)."""
    if dims != cfg.latent_action_dim:
        raise ConfigError(
            f"model.latent_action_dim: the clips' true actions have {dims} dims, the RSSM's action input "
            f"{cfg.latent_action_dim}; a model.true_actions model needs model.latent_action_dim: {dims}"
        )


def preprocess(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [.., 3, 64, 64] → float images in [−0.5, 0.5] (PreLAR supplementary Table 1)."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames [B, T, 3, 64, 64], got {frames.dtype}; pass the raw frames")
    return frames.float() / 255.0 - 0.5


def to_frames(images: torch.Tensor) -> torch.Tensor:
    """Float images in [−0.5, 0.5] → uint8 frames (rounded, clipped)."""
    return ((images.float() + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def _flat_apply(module: nn.Module, x: torch.Tensor, dims: int) -> torch.Tensor:
    """Apply `module` to x [.., *trailing `dims` dims] by flattening the leading dims."""
    lead = x.shape[:-dims]
    out = module(x.reshape(-1, *x.shape[-dims:]))
    return out.reshape(*lead, *out.shape[1:])


class OpenLoop(nn.Module):
    """The open-loop rollout, written once for both world models (each brings its own `encode`, `observe`,
    `rssm`, `features` and `decode`): `WorldModel` with latent actions (or none, action-free), the fine-tuned
    models with encoded or real actions, APV's stacked model with real actions."""

    def open_loop(
        self,
        frames: torch.Tensor,
        context: int,
        action: torch.Tensor | None,
        is_first: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        """Open-loop video prediction (eval mode): frames uint8 [B, T, 3, 64, 64] → predicted frames uint8
        [B, T − context, 3, 64, 64] for steps context..T−1.

        Observes frames 0..context−1 (posterior), then rolls the transition (prior) forward without seeing a
        later frame. `action` is the RSSM's action input [B, T, A] ([:, t] = the action that led into step t):
        `WorldModel.action_input` of latent actions ã [B, T−1, A], encoded or real actions, or None for an
        action-free model. `is_first` [B, T] resets the state where true (within the context); `generator`
        draws the context's posterior samples (and the prior's, with `sample`); `sample=False` takes the
        prior's mode.
        """
        B, T = frames.shape[:2]
        if not 1 <= context < T:
            raise ValueError(f"open_loop needs 1 <= context < T, got context={context}, T={T}")
        if action is not None and action.shape[:2] != (B, T):
            raise ValueError(
                f"action must be the RSSM's action input [B, T, A] = [{B}, {T}, A], got "
                f"{tuple(action.shape)} (latent actions [B, T-1, A] go through action_input first)"
            )
        with evaluating(self):
            embed = self.encode(preprocess(frames[:, :context]))  # [B, context, E]
            seen = None if action is None else action[:, :context]
            first = None if is_first is None else is_first[:, :context]
            post, _ = self.observe(embed, seen, first, None, generator)
            last = {k: v[:, -1] for k, v in post.items()}  # the state after the last context frame
            future = None if action is None else action[:, context:]  # [B, T − context, A]
            prior = self.rssm.imagine(last, future, T - context, generator, sample)  # [B, T − context, ..]
            return to_frames(self.decode(self.features(prior)))


class WorldModel(OpenLoop):
    def __init__(self, cfg: Model):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNetEncoder(3, cfg.cnn_width, norm=cfg.resnet_norm)
        action_dim = 0 if cfg.action_free else cfg.latent_action_dim
        self.rssm = RSSM(self.encoder.out_dim, action_dim, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes)
        self.decoder = ResNetDecoder(self.rssm.feat_dim, cfg.cnn_width, norm=cfg.resnet_norm)
        self.inverse_dynamics = (
            None
            if not cfg.latent_actions
            else InverseDynamics(cfg.cnn_width, cfg.hidden, cfg.latent_action_dim, cfg.latent_action_min_std,
                                 norm=cfg.resnet_norm)
        )
        self.to(memory_format=torch.channels_last)  # conv weights in the layout of their inputs

    # --- building blocks (also used by fine-tuning) ---------------------------------------------------

    def initial_state(self, batch: int, device=None) -> State:
        return self.rssm.initial_state(batch, device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, T, 3, 64, 64] (float, [−0.5, 0.5]) → embed [B, T, E]."""
        return _flat_apply(self.encoder, images, 3)

    def latent_action_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(ã_t | o_t, o_{t+1}) for t = 0..T−2: images [B, T, ..] → (mean, std) [B, T−1, A]."""
        if self.inverse_dynamics is None:
            raise ValueError(
                "this world model has no latent actions: it is action-free (model.action_free=true), is "
                "given the true actions (model.true_actions=true), or has dropped its inverse dynamics "
                "(fine-tuning)"
            )
        B, T = images.shape[:2]
        obs = images[:, :-1].reshape(-1, *images.shape[2:])  # [B(T−1), 3, 64, 64]
        nxt = images[:, 1:].reshape(-1, *images.shape[2:])
        mean, std = self.inverse_dynamics(obs, nxt)  # [B(T−1), A]
        return mean.view(B, T - 1, -1), std.view(B, T - 1, -1)

    @staticmethod
    def action_input(latent_actions: torch.Tensor) -> torch.Tensor:
        """ã_t [B, T−1, A] → the RSSM's action input [B, T, A]: step t gets ã_{t−1}, step 0 a zero action."""
        return torch.cat([torch.zeros_like(latent_actions[:, :1]), latent_actions], 1)

    def observe(
        self,
        embed: torch.Tensor,
        latent_action: torch.Tensor | None,
        is_first: torch.Tensor | None = None,
        state: State | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, State]:
        """(post, prior) states [B, T, ..].

        embed [B, T, E]; latent_action [B, T, A] with [:, t] = ã_{t−1} (None if action-free); is_first [B, T]
        resets the state where true; state: the state before t = 0 (default zeros).
        """
        return self.rssm.observe(embed, latent_action, is_first, state, generator)

    def imagine_step(
        self,
        state: State,
        latent_action: torch.Tensor | None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> State:
        """The transition p(ŝ_t | s_{t−1}, ã_{t−1}) for one step: state [N, ..], latent_action [N, A]."""
        return self.rssm.imagine_step(state, latent_action, generator, sample)

    @staticmethod
    def features(state: State) -> torch.Tensor:
        """state → features [.., F] = [deter, flattened stoch] (the decoder's and the heads' input)."""
        return RSSM.features(state)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features [.., F] → image mean [.., 3, 64, 64] (the unit-variance Gaussian's mean)."""
        return _flat_apply(self.decoder, features, 1)

    # --- pre-training objective -----------------------------------------------------------------------

    def loss(
        self,
        frames: torch.Tensor,
        generator: torch.Generator | None = None,
        beta_a: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor | State]]:
        """Eq. 9 on a batch of video segments.

        frames uint8 [B, T, 3, 64, 64] (T ≥ 2); `generator` (on the model's device) makes the latent-action
        samples, the state samples and the consistency pairing reproducible; `beta_a` (a 0-d tensor) weighs
        the action KL in place of `model.beta_a` (its warm-up, `losses.warmup_weight`); `actions` [B, T−1, A]
        (actions[:, t] leads from frame t to t+1): the true actions, which a `model.true_actions` model takes
        in the latent action's place (the loss is then Eq. 9 without the action KL and consistency terms).
        Returns (loss, metrics: detached float scalars, outputs: post, prior, embed, latent_action (the RSSM's
        action input [B, T, A]), latent_action_mean/std [B, T−1, A] (None if action-free); the outputs still
        carry the graph).
        """
        cfg = self.cfg
        images = preprocess(frames)  # [B, T, 3, 64, 64]
        B, T = images.shape[:2]
        if T < 2:
            raise ValueError(f"pre-training needs segments of at least 2 frames, got T={T}")
        embed = self.encode(images)  # [B, T, E]
        zero = images.new_zeros(())
        mean = std = action = None
        if cfg.true_actions:
            if actions is None or actions.shape[:2] != (B, T - 1):
                raise ValueError(
                    f"model.true_actions: the loss needs the segments' true actions [B, T-1, A] = "
                    f"[{B}, {T - 1}, A], got {None if actions is None else tuple(actions.shape)}"
                )
            action = self.action_input(actions.to(images.dtype))  # [B, T, A]
        elif not cfg.action_free:
            mean, std = self.latent_action_posterior(images)  # [B, T−1, A]
            if cfg.use_action_kl:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device)
                latent = mean + std * eps  # rsample
            else:
                latent = mean  # deterministic latent action (PreLAR w/o CL & AL)
            action = self.action_input(latent)  # [B, T, A]
        post, prior = self.observe(embed, action, None, None, generator)

        recon = self.decode(self.features(post))  # [B, T, 3, 64, 64]
        image_ll = losses.image_log_likelihood(recon, images)  # [B, T]
        image_nll = -image_ll.mean()
        kl_loss, kl_value = losses.dynamics_kl(post["logits"], prior["logits"], cfg.kl_balance, cfg.kl_free)
        with_kl = mean is not None and cfg.use_action_kl
        kl_action = losses.action_kl(mean, std).mean() if with_kl else zero  # nats, the measurement
        kl_action_loss = losses.action_kl_loss(mean, std, cfg.action_kl_free) if with_kl else zero
        outputs = {"post": post, "prior": prior, "embed": embed, "latent_action": action,
                   "latent_action_mean": mean, "latent_action_std": std}
        consistency, agreement = zero, zero
        if mean is not None and cfg.use_consistency:
            consistency, agreement = self.consistency(outputs, generator)
        total = losses.pretrain_loss(image_nll, kl_loss, kl_action_loss, consistency,
                                     cfg.beta, cfg.beta_a if beta_a is None else beta_a, cfg.beta_r)

        with torch.no_grad():
            metrics = {
                "total": total,
                "image_nll": image_nll,
                # the NLL is ½·(squared error + ln 2π) per pixel: recover the mean squared error from it
                "image_mse": 2.0 * image_nll / images[0, 0].numel() - math.log(2.0 * math.pi),
                "kl_dyn": kl_value.mean(),
                "kl_dyn_loss": kl_loss,
                "kl_action": kl_action,
                "consistency": consistency,
                "consistency_agreement": agreement,
                "prior_entropy": losses.categorical_entropy(prior["logits"]).mean(),
                "post_entropy": losses.categorical_entropy(post["logits"]).mean(),
            }
            if mean is not None:
                metrics["latent_action_std"] = std.mean()
                metrics["latent_action_mean_abs"] = mean.abs().mean()
            metrics = {k: v.detach().float() for k, v in metrics.items()}
        return total, metrics, outputs

    def consistency(
        self, outputs: dict, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6–8 with pairs from a batch shuffle: for each (b, t), the second latent action is (perm(b), t),
        perm(b) ≠ b (the reference's plain shuffle also pairs some sequences with themselves: Δ = 0 noise).

        Δŝ: KL between the one-step priors from s_t of (b, t) with ã_t(b) (the prior of the observe pass)
        and with ã_t(perm(b)) (imagined here, without gradient: the state side is a detached target).
        Δã: KL between the two action posteriors, or the L2 distance of the means when the latent action is
        deterministic. `outputs`: as returned by `loss`.
        Returns (loss, the fraction of pairs whose orderings agree).
        """
        post, prior, action = outputs["post"], outputs["prior"], outputs["latent_action"]
        mean, std = outputs["latent_action_mean"], outputs["latent_action_std"]
        B = mean.shape[0]
        if B < 2:
            return mean.new_zeros(()), mean.new_zeros(())  # no second sequence to pair with
        # a random derangement (a random cycle through the batch), so that no sequence pairs with itself
        order = torch.randperm(B, generator=generator, device=mean.device)
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)
        with torch.no_grad():
            start = {k: v[:, :-1].flatten(0, 1) for k, v in post.items()}  # s_t, t = 0..T−2: [B(T−1), ..]
            shuffled = self.rssm.imagine_step(start, action[perm][:, 1:].flatten(0, 1), generator)
            state_dist = losses.categorical_kl(prior["logits"][:, 1:].flatten(0, 1), shuffled["logits"])
        if self.cfg.use_action_kl:
            action_dist = losses.gaussian_kl(mean, std, mean[perm], std[perm]).flatten()  # [B(T−1)]
        else:
            action_dist = (mean - mean[perm]).norm(dim=-1).flatten()
        loss = losses.consistency_loss(action_dist, state_dist, self.cfg.consistency_form,
                                       self.cfg.consistency_temperature)
        with torch.no_grad():
            ds = torch.sign(state_dist[:, None] - state_dist[None, :])
            da = torch.sign(action_dist[:, None] - action_dist[None, :])
            pairs = ds != 0
            agreement = ((ds == da) & pairs).sum() / pairs.sum().clamp(min=1)
        return loss, agreement

    # --- evaluation helpers ---------------------------------------------------------------------------

    def infer_latent_actions(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 [B, T, 3, 64, 64] → q(ã_t | o_t, o_{t+1}) as (mean, std) [B, T−1, A] (eval mode)."""
        with evaluating(self):
            return self.latent_action_posterior(preprocess(frames))


class StackedWorldModel(OpenLoop):
    """APV's stacked latent prediction model (APV Sec. 3.2, Eq. 3–4) for fine-tuning.

    Action-free level: the pre-trained encoder and action-free RSSM give z_t (its features [h^AF, z^AF]).
    Action-conditional level: a fresh RSSM with representation q(s_t | s_{t−1}, a_{t−1}, z_t) (z_t in the
    place of the image embedding) and transition p(s_t | s_{t−1}, a_{t−1}); the image decoder reads s_t and
    starts as a copy of the pre-trained decoder. Imagination uses only the action-conditional transition.

    States are the action-conditional {deter, stoch, logits}; `observe` and `initial_state` add the
    action-free level's as {af_deter, af_stoch, af_logits} (flat, so that dict-of-tensor code such as
    `{k: v[:, -1] for k, v in post.items()}` works; its KL term of Eq. 4 reads `af_logits`).
    """

    def __init__(self, action_free: WorldModel, action_dim: int):
        super().__init__()
        if not action_free.cfg.action_free:
            raise ValueError("StackedWorldModel needs an action-free world model (model.action_free=true)")
        cfg = action_free.cfg
        self.cfg = cfg
        self.action_free = action_free
        self.rssm = RSSM(action_free.rssm.feat_dim, action_dim, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes)
        self.decoder = copy.deepcopy(action_free.decoder)

    def initial_state(self, batch: int, device=None) -> State:
        state = self.rssm.initial_state(batch, device)
        return state | {f"af_{k}": v for k, v in self.action_free.initial_state(batch, device).items()}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.action_free.encode(images)

    @staticmethod
    def action_free_state(state: State) -> State:
        """The action-free level's {deter, stoch, logits} of a stacked state (e.g. for APV's bonus, Eq. 5)."""
        return {k[3:]: v for k, v in state.items() if k.startswith("af_")}

    def observe(
        self,
        embed: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor | None = None,
        state: State | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, State]:
        """embed [B, T, E], action [B, T, A] ([:, t] = a_{t−1}) → (post, prior) [B, T, ..] of both levels."""
        keys = ("deter", "stoch", "logits")
        af_state = None if state is None else {k: state[f"af_{k}"] for k in keys}
        af_post, af_prior = self.action_free.observe(embed, None, is_first, af_state, generator)
        z = self.action_free.features(af_post)  # [B, T, F_AF]
        ac_state = None if state is None else {k: state[k] for k in keys}
        post, prior = self.rssm.observe(z, action, is_first, ac_state, generator)
        post |= {f"af_{k}": v for k, v in af_post.items()}
        prior |= {f"af_{k}": v for k, v in af_prior.items()}
        return post, prior

    def imagine_step(
        self,
        state: State,
        action: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> State:
        """The action-conditional transition p(s_t | s_{t−1}, a_{t−1}) (APV imagines with this level only)."""
        return self.rssm.imagine_step(state, action, generator, sample)

    @staticmethod
    def features(state: State) -> torch.Tensor:
        return RSSM.features(state)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return _flat_apply(self.decoder, features, 1)
