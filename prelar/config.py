"""Typed configuration: the one place where every parameter of the pipeline is declared, typed and checked.

The defaults here are the values code uses: `Params()` is the whole configuration of profile `cpu`, and
`prelar` run outside a repository uses it. `params.yaml` (the file DVC tracks and `dvc exp run -S` edits)
holds the same base values, written out so that DVC can track them; tests/test_config.py proves the two
equal, key for key, so change a default in both. A `profile` key selects a named block of overrides from
`profiles:` (e.g. `paper` for the papers' values, `tiny` for the test suite), applied on top of the base
values, so that one switch moves the whole pipeline between scales. Unknown keys and wrong types fail
with a message naming the key and the file. Method and pre-training variant names are checked against
the registry in `prelar.methods`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from prelar import methods as registry

# The six downstream tasks of the PreLAR paper: pre-training must never see them.
DOWNSTREAM_TASKS = (
    "lever-pull-v3",
    "drawer-open-v3",
    "door-lock-v3",
    "button-press-topdown-wall-v3",
    "reach-v3",
    "dial-turn-v3",
)


# auto: bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX-512 BF16), fp32
# elsewhere (bf16 is emulated on AVX2-only CPUs, ~80x slower); see `prelar.device.choose_precision`.
Precision = Literal["auto", "bf16", "fp32"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetaworldSource(_Section):
    """Videos of Meta-world's scripted expert policies, rendered with MuJoCo (the offline default)."""

    tasks: list[str] | Literal["all"] = "all"  # "all": every MT1 task except `exclude`
    exclude: list[str] = list(DOWNSTREAM_TASKS)
    episodes_per_task: int = 2
    first_episode: NonNegativeInt = 0  # the first episode's number: a later folder can add episodes
    max_steps: int = 100  # frames per episode = max_steps + 1
    action_repeat: PositiveInt = 1  # simulator steps per frame (the expert's action is held for them)
    cameras: list[str] = ["corner"]
    action_noise: float = 0.1  # std of Gaussian noise added to the expert's action (then clipped to [-1, 1])
    seed: int = 0
    fast_render: bool = True  # shadows, reflections and MSAA off (several times faster on CPU)
    out: str = "datasets/shards/metaworld"


class RLBenchSource(_Section):
    """RLBench generator layout: <src>/<task>/variation<N>/episodes/episode<M>/<camera>_rgb/<i>.png."""

    src: str = "datasets/raw/rlbench"
    cameras: list[str] = ["front", "left_shoulder", "right_shoulder", "overhead", "wrist"]
    resize: Literal["squash", "center_crop"] = "squash"
    out: str = "datasets/shards/rlbench"


class SSv2Source(_Section):
    """Something-Something-V2: a folder of <id>.webm plus an optional labels JSON."""

    src: str = "datasets/raw/ssv2/videos"
    labels: str | None = "datasets/raw/ssv2/labels/train.json"
    frame_stride: int = 1  # keep every k-th decoded frame (SSv2 is ~12 fps)
    max_clips: int | None = None  # the first clips in id order (after the labels join)
    decoder: Literal["auto", "decord", "pyav"] = "auto"  # auto: decord, PyAV when decord fails
    resize: Literal["squash", "center_crop"] = "squash"  # the papers squash 240p to 64x64
    out: str = "datasets/shards/ssv2"


class Shards(_Section):
    """How clips are transcoded and sharded (shared by every source)."""

    size: int = 64
    clips_per_shard: int = 32
    min_frames: int = 26  # pre-training uses segments of 25 frames plus one
    workers: int = 2  # decode processes (0: decode in the main process)
    sheet_rows: int = 8  # clips shown in contact_sheet.png
    sheet_columns: int = 8  # frames per clip shown in contact_sheet.png


class Data(_Section):
    metaworld: MetaworldSource = MetaworldSource()
    rlbench: RLBenchSource = RLBenchSource()
    ssv2: SSv2Source = SSv2Source()
    shards: Shards = Shards()


class Loader(_Section):
    """Training segments streamed from shards."""

    segment_length: int = 16
    batch_size: int = 16
    workers: int = 0
    shuffle_buffer: int = 256
    holdout_fraction: float = 0.1  # clips (by hash of id) kept out of training for evaluation


class Model(_Section):
    """World model sizes and the switches that select PreLAR, its ablations and APV's action-free model."""

    cnn_width: int = 16  # channels of the first ResNet stage (ContextWM / paper: 48)
    resnet_norm: Literal["batch", "none"] = "batch"  # norm in the ResNets' residual layers (ContextWM: batch)
    deter: int = 256  # GRU deterministic state (paper: 1024)
    hidden: int = 256  # MLP width inside the RSSM (paper: 1024)
    stoch: int = 32  # number of categorical variables
    classes: int = 32  # classes per categorical variable
    latent_action_dim: int = 64
    latent_action_min_std: float = 0.1  # std of q(ã|o_t,o_{t+1}) = softplus(raw) + min_std
    kl_balance: float = 0.8
    kl_free: float = 0.0  # free nats on the dynamics KL (DreamerV2 on Atari: 0)
    beta: float = 1.0  # dynamics KL weight (Eq. 5)
    beta_a: float = 1.0  # action KL weight (Eq. 5)
    action_kl_free: float = 0.0  # free nats on the action KL (not in the paper: 0 is its objective)
    beta_a_warmup: NonNegativeInt = 0  # updates over which β_a rises linearly from 0 (not in the paper: 0)
    beta_r: float = 1.0  # action-state consistency weight (Eq. 9)
    action_free: bool = False  # APV's action-free video prediction model (no latent action)
    use_action_kl: bool = True  # PreLAR w/o CL & AL: False (the latent action is then deterministic)
    use_consistency: bool = True  # PreLAR w/o CL: False
    consistency_form: Literal["soft", "sign"] = "soft"  # "sign": the reference code's inert loss
    consistency_temperature: float = 1.0
    # The clip's true action a_t in the latent action's place (a yardstick from labels, not in the papers: the
    # `true_action` variant): no inverse dynamics, action KL or consistency loss; latent_action_dim = the
    # actions' dims (Meta-world: 4)
    true_actions: bool = False

    @model_validator(mode="after")
    def _true_actions_alone(self) -> Model:
        if self.true_actions and (self.action_free or self.use_action_kl or self.use_consistency):
            raise ValueError(
                "true_actions: the true action replaces the latent action, so it needs action_free, "
                "use_action_kl and use_consistency all false (pre-train it as --variant true_action)"
            )
        return self

    @property
    def latent_actions(self) -> bool:
        """Whether the model infers latent actions (PreLAR and its ablations; not APV, not true actions)."""
        return not (self.action_free or self.true_actions)


class Pretrain(_Section):
    """World-model pre-training on action-free video segments."""

    steps: int = 160
    lr: float = 3e-4
    # constant: the papers'; cosine: annealed from `lr` to 0 over `steps` (not in the papers; a cosine run
    # resumes only with its own `steps`)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    eps: float = 1e-5
    grad_clip: float = 100.0
    precision: Precision = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False
    log_every: int = 20
    checkpoint_every: int = 100  # also where the data stream reseeds (exact resume)
    eval_clips: int = 16  # held-out clips for open-loop prediction (learning curves and the end; 0: skip)
    curve_every: int = 40  # updates between learning-curve points (prelar/evaluate/curves.py; 0: end only)
    probe: bool = True  # the latent-action probe (curves, end) on the probe stage's clips (evaluate.probe_*)
    out: str = "runs/pretrain"  # a variant's run folder is <out>/<variant>
    # The variants the DVC `pretrain` stage pre-trains (its `foreach`), each with `model` values applied on
    # top of `model:`. What defines a variant (e.g. apv: action_free) is registered in prelar/methods.py,
    # which `prelar pretrain --variant` applies first; values here may add to it, never contradict it.
    variants: dict[str, dict[str, bool | float]] = {
        "prelar": {},
        "prelar_no_cl": {"use_consistency": False},
        "prelar_no_cl_al": {"use_consistency": False, "use_action_kl": False},
        "apv": {"action_free": True},
    }

    @field_validator("variants")
    @classmethod
    def _registered_variants(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, values in variants.items():
            check_variant_values(name, values)
        return variants


def check_variant_values(variant: str, values: Mapping[str, Any]) -> None:
    """`model` values to apply on top of a registered pre-training variant: ValueError unless every key is a
    `model` parameter and none contradicts what prelar/methods.py defines the variant by."""
    defined = registry.variant(variant).model
    unknown = sorted(set(values) - set(Model.model_fields))
    if unknown:
        raise ValueError(f"'{variant}': {unknown} are not `model` parameters")
    clash = {k: v for k, v in values.items() if k in defined and defined[k] != v}
    if clash:
        raise ValueError(
            f"'{variant}' sets {clash}, but prelar/methods.py defines it by {dict(defined)}, which {clash} "
            "would contradict; register a new variant there instead"
        )


class Bonus(_Section):
    """Video-based intrinsic bonus (PreLAR Eq. 12, APV Eq. 5); APV's code values."""

    beta: float = 1.0  # weight of r_int in the auxiliary reward r + beta * r_int (Eq. 11)
    window: int = 5  # steps averaged into one representation
    dim: int = 128  # random projection width
    k: int = 16  # k-th nearest neighbour
    queue_size: int = 4096
    momentum: float = 0.99  # running mean of the bonus magnitude (normalisation)


class Behavior(_Section):
    """DreamerV2 actor-critic in imagination (PreLAR supplementary Sec. 1; APV's code for the rest)."""

    horizon: int = 15
    gamma: float = 0.99
    lam: float = 0.95
    entropy: float = 1e-4  # eta in Eq. 4
    actor_lr: float = 8e-5
    critic_lr: float = 8e-5
    eps: float = 1e-5
    grad_clip: float = 100.0
    layers: int = 2  # hidden layers of actor, critic and reward heads (paper: 4)
    units: int = 128  # (paper: 400)
    min_std: float = 0.1  # of the actor's truncated normal
    target_update_every: int = 100  # slow critic copied every N updates
    target_fraction: float = 1.0


class FinetuneMatrix(_Section):
    """The runs of the DVC `finetune` stage (method x task x seed). DVC's templating reads these lists
    from params.yaml's base values, never through a profile: to change the runs, edit them in
    params.yaml (`finetune.matrix`), and here too, where they are only the typed defaults."""

    methods: list[str] = ["prelar", "apv", "dreamerv2"]
    tasks: list[str] = ["drawer-open-v3"]
    seeds: list[int] = [0]

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, names: list[str]) -> list[str]:
        for name in names:
            registry.method(name)
        return names


class Finetune(_Section):
    """Fine-tuning and behaviour learning on Meta-world (one `method` switch for every baseline)."""

    method: str = "prelar"  # a method of prelar/methods.py
    task: str = "drawer-open-v3"
    seed: int = 0
    pretrained: str | None = None  # checkpoint of `prelar pretrain` (every method but dreamerv2 needs one)
    env_steps: int = 800
    max_episode_steps: int = 100  # Meta-world's limit: 500 (an episode has max_episode_steps + 1 frames)
    action_repeat: PositiveInt = 1  # simulator steps per env step (paper: 1); env_steps count env steps
    camera: str = "corner"
    fast_render: bool = True
    eval_every: int = 400
    eval_episodes: int = 2
    replay_capacity: int = 100_000  # steps (paper: 1e6, 12.3 GB of frames)
    prefill: int = 400  # random-action steps before the first update (paper: 5000)
    pretrain_updates: int = 20  # updates right after the prefill (DreamerV2/APV `pretrain`)
    train_every: int = 10  # env steps per update
    batch_size: int = 8  # segments per update (paper: 50)
    segment_length: int = 50
    model_lr: float = 3e-4
    model_eps: float = 1e-5
    model_grad_clip: float = 100.0
    freeze_updates: int = 100  # encoder + RSSM at lr 0 for the first N updates
    action_encoder_layers: int = 2
    action_encoder_units: int = 256  # (paper: 1024)
    reward_layers: int = 2  # reward heads (paper: 4)
    reward_units: int = 128  # (paper: 400)
    precision: Precision = "auto"
    device: str = "auto"
    checkpoint_every: int = 1000  # env steps; saved at the next episode end
    log_every: int = 500  # env steps
    video_fps: int = 20
    bonus: Bonus = Bonus()
    behavior: Behavior = Behavior()
    matrix: FinetuneMatrix = FinetuneMatrix()
    out: str = "runs/finetune"

    @field_validator("method")
    @classmethod
    def _registered_method(cls, name: str) -> str:
        registry.method(name)
        return name


class Evaluate(_Section):
    """Evaluation stages (`prelar evaluate probe | controllability | transfer-data | transfer`).

    Pre-training is too costly on CPU to repeat per seed, so `seeds` re-run only the evaluation's own
    randomness: the probe's episode split (and the untrained baseline's initialisation), which clip lends
    its latent actions in ΔPSNR, and, in the offline transfer, the episode split, the fresh parameters'
    initialisation and the replayed batches. The transfer's fine-tuning takes its learning rate, clipping,
    architecture and freeze of pre-trained parts (`freeze_updates`) from `finetune`.
    """

    seeds: list[int] = Field([0], min_length=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # autocast of every forward (and the transfer's updates)
    context: PositiveInt = 5  # open-loop prediction: frames observed before the prior imagines
    horizon: PositiveInt = 20  # open-loop prediction: frames imagined after the context
    min_holdout_episodes: int = 8  # the probe uses held-out clips if they hold this many episodes, else all
    probe_clips: PositiveInt = 96  # clips with true actions (each one episode and camera)
    probe_test_fraction: float = Field(0.3, gt=0, lt=1)  # episodes the ridge probe is scored on
    probe_alpha: float | None = None  # ridge penalty; None: chosen by cross-validation over fit episodes
    probe_alphas: list[float] = Field([1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5], min_length=1)  # the choices
    # the probe's fit side: its own clips' fit episodes ("held_out"), or those and every clip of the
    # pre-training split ("pretraining": their actions are stored, never trained on; same test episodes)
    probe_fit: Literal["held_out", "pretraining"] = "held_out"
    # what the probe reads out: the true action a_t ("action", the papers' sense), or the end effector's
    # motion between the two frames, hand_{t+1} − hand_t ("hand_motion": xyz, gripper opening; `Clip.hand`)
    probe_target: Literal["action", "hand_motion"] = "action"
    controllability_windows: PositiveInt = 24  # held-out windows of context + horizon frames (several a clip)
    transfer_tasks: list[str] = ["drawer-open-v3"]  # downstream tasks: never in data.metaworld.tasks
    transfer_episodes: PositiveInt = 8  # per task, noisy scripted expert, true actions and rewards
    transfer_max_steps: int = 100  # frames per episode = transfer_max_steps + 1
    transfer_action_noise: float = 0.3
    transfer_seed: int = 1
    transfer_data: str = "datasets/shards/downstream"
    transfer_updates: list[NonNegativeInt] = Field([0, 50, 100], min_length=1)  # K: after K updates
    transfer_batch_size: PositiveInt = 8  # segments per update
    transfer_segment_length: int = 25
    transfer_test_fraction: float = Field(0.25, gt=0, lt=1)  # episodes held out of fine-tuning, scored
    transfer_eval_windows: PositiveInt = 16  # windows of context + horizon frames scored per split
    out: str = "runs/evaluate"

    @property
    def window(self) -> int:
        """Frames of one open-loop window: `context` observed + `horizon` imagined."""
        return self.context + self.horizon


class Report(_Section):
    """The HTML report."""

    out: str = "reports"
    published_results: str | None = None  # CSV: method, task, seed, env_step, success
    bootstrap_reps: int = 2000  # stratified-bootstrap replicates per interval (rliable's default: 50000)
    confidence: float = 0.95
    gifs_per_method: int = 2  # GIF artifacts (sample predictions) embedded per method


def typed_values(
    section: type[BaseModel], values: dict[str, Any], allowed: set[str], name: str
) -> dict[str, Any]:
    """`values` for some fields of `section` (only `allowed` ones), each checked and converted as the section
    types it: a ValueError naming the unknown keys or the bad values."""
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{unknown} are not {name} parameters that may be set here ({sorted(allowed)})")
    try:
        typed = section.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(problems) from None
    return {key: getattr(typed, key) for key in values}


def _unique(values: list) -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{repeated} appear more than once")
    return values


class StudyRun(_Section):
    """One run of the study: a pre-training variant (prelar/methods.py), `model` values on top of it, and
    `loader` / `pretrain` values for this run alone (e.g. {batch_size: 32}: more frames per update). The
    study sets the length and curve spacing of every run, and every run shares its held-out clips."""

    variant: str = "prelar"
    model: dict[str, float | bool] = {}
    loader: dict[str, int | float] = {}
    pretrain: dict[str, int | float | bool | str] = {}

    @model_validator(mode="after")
    def _registered(self) -> StudyRun:
        check_variant_values(self.variant, self.model)
        for section, values, section_type, owned in (
            ("loader", self.loader, Loader, {"holdout_fraction"}),
            ("pretrain", self.pretrain, Pretrain, {"steps", "curve_every"}),
        ):
            if shared := sorted(set(values) & owned):
                raise ValueError(f"`{section}` {shared}: the study sets these for every run (`study`)")
            # unknown keys and bad values fail when params load, not after earlier runs have trained
            typed_values(section_type, values, set(section_type.model_fields) - owned, f"`{section}`")
        return self


class Study(_Section):
    """The pre-training study (`prelar study`, pipelines/study/dvc.yaml): learning curves of each run of
    `runs` x `seeds`, `steps` updates each, a curve point every `curve_every`; figures, tables in `docs`.
    It trains on its own shards: `data.metaworld` with the values of `data` (rendered by
    `prelar ingest metaworld --study`)."""

    data: dict[str, Any] = {
        "action_repeat": 4,
        "episodes_per_task": 4,
        "max_steps": 50,
        "out": "datasets/shards/study",
    }
    steps: PositiveInt = 1000
    curve_every: PositiveInt = 100
    seeds: list[int] = [0, 1, 2]
    runs: dict[str, StudyRun] = {
        "prelar": StudyRun(variant="prelar"),
        "prelar_no_cl_al": StudyRun(variant="prelar_no_cl_al"),
        "apv": StudyRun(variant="apv"),
        "prelar_no_cl": StudyRun(variant="prelar_no_cl"),
        "prelar_beta_a_warmup_500": StudyRun(variant="prelar", model={"beta_a_warmup": 500}),
    }
    # The probe's supervised ceiling (`probe.supervised_probe`, not in the papers): an inverse dynamics
    # encoder of `model`'s sizes fit to the true actions of the study's pre-training clips.
    supervised_updates: PositiveInt = 1000
    supervised_batch_size: PositiveInt = 64
    supervised_lr: PositiveFloat = 1e-3
    # The prediction's yardstick from labels (`study.true_action_model`, not in the papers): DreamerV2's world
    # model of `model`'s sizes trained from scratch with the true actions of the pre-training clips; 0 for
    # none (the summary without it).
    true_action_updates: NonNegativeInt = 1000
    # The offline transfer of every run's checkpoint and of scratch, seed by seed (`study.offline_transfer`):
    # `evaluate`'s transfer with these K and downstream episodes, rendered at `data`'s action repeat; [] for
    # none (the summary without it).
    transfer_updates: list[NonNegativeInt] = [0, 100, 300]
    transfer_episodes: PositiveInt = 16
    experiment: str = "prelar-study"  # the MLflow experiment of its runs
    out: str = "runs/study"  # a run's folder: <out>/<run>/seed<seed>
    docs: str = "docs/study"  # learning_curves.png, curves.csv, summary.csv / .md / .json

    @field_validator("data")
    @classmethod
    def _metaworld_values(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = typed_values(MetaworldSource, data, set(MetaworldSource.model_fields), "data.metaworld")
        if "out" not in data:
            raise ValueError("needs its own `out` shard folder (the default shards must stay as they are)")
        return data

    def source(self, base: MetaworldSource) -> MetaworldSource:
        """The study's Meta-world source: `base` (data.metaworld) with the values of `data`; a ConfigError
        when both would write the same shard folder."""
        source = MetaworldSource.model_validate({**base.model_dump(), **self.data})
        if Path(source.out).resolve() == Path(base.out).resolve():
            raise ConfigError(
                f"study.data.out: {source.out} is also data.metaworld.out; give the study's shards a folder "
                "of their own"
            )
        return source


class MLflowCfg(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "prelar"


class OnlineCheckpoint(_Section):
    """A run of the online study from another checkpoint than the default pipeline's: `method` (one that
    loads a pre-trained checkpoint) fine-tuned from `pretrained` (e.g. a study run's checkpoint.pt)."""

    method: str
    pretrained: str

    @field_validator("method")
    @classmethod
    def _loads_a_checkpoint(cls, name: str) -> str:
        if not registry.method(name).pretrained:
            raise ValueError(f"{name} loads no pre-trained checkpoint; list it in online.methods instead")
        return name


class Online(_Section):
    """The online RL study (`prelar online`, pipelines/online/dvc.yaml): each of `methods` x `seeds`
    fine-tuned on one task with the values of `finetune` on top of the `finetune` section (the pre-trained
    checkpoints of the default pipeline), into `out/<method>/seed<seed>`; success and return curves with
    95% intervals over seeds beside a uniformly random policy on the same evaluation episodes, in `docs`.
    `checkpoints` adds named runs of a method from other checkpoints (into `out/<name>/seed<seed>`)."""

    finetune: dict[str, Any] = {
        "task": "reach-v3",
        "action_repeat": 2,
        "max_episode_steps": 50,
        "env_steps": 2500,
        "prefill": 500,
        "train_every": 5,
        "eval_every": 500,
        "eval_episodes": 10,
        "log_every": 500,
    }
    methods: list[str] = Field(["dreamerv2", "apv", "prelar"], min_length=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    checkpoints: dict[str, OnlineCheckpoint] = {}
    experiment: str = "prelar-online"  # the MLflow experiment of its runs
    out: str = "runs/online"
    docs: str = "docs/online"  # success_curves.png, curves.csv, summary.md / .json

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, names: list[str]) -> list[str]:
        for name in names:
            registry.method(name)
        return _unique(names)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        return _unique(seeds)

    @model_validator(mode="after")
    def _checkpoints_named_apart(self) -> Online:
        clash = sorted(set(self.checkpoints) & set(self.methods))
        if clash:
            raise ValueError(f"checkpoints {clash} are also online.methods: give them names of their own")
        return self

    @property
    def runs(self) -> list[str]:
        """Every run's name: the methods from the default pipeline's checkpoints, then `checkpoints`."""
        return [*self.methods, *self.checkpoints]

    @field_validator("finetune")
    @classmethod
    def _finetune_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        # method, seed, out and pretrained are the study's; the nested sections stay as in `finetune`
        own = {"method", "seed", "out", "pretrained", "matrix", "bonus", "behavior"}
        return typed_values(Finetune, values, set(Finetune.model_fields) - own, "plain finetune")


class Params(_Section):
    profile: str = "cpu"
    seed: int = 0
    mlflow: MLflowCfg = MLflowCfg()
    data: Data = Data()
    loader: Loader = Loader()
    model: Model = Model()
    pretrain: Pretrain = Pretrain()
    finetune: Finetune = Finetune()
    evaluate: Evaluate = Evaluate()
    report: Report = Report()
    study: Study = Study()
    online: Online = Online()


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the key and the fix."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(raw: dict[str, Any], profile: str | None = None, source: str = "params") -> Params:
    """Apply the selected profile's overrides to the base values and validate the result."""
    raw = dict(raw or {})
    profiles = raw.pop("profiles", {}) or {}
    name = profile or raw.get("profile", "cpu")
    if name not in ("cpu", *profiles):
        raise ConfigError(
            f"{source}: profile '{name}' is not defined; choose one of {['cpu', *sorted(profiles)]} "
            f"or add it under 'profiles:'"
        )
    merged = _merge(raw, profiles.get(name, {}))
    merged["profile"] = name
    return _validate(merged, f"{source}: invalid parameters")


def _validate(raw: dict[str, Any], what: str) -> Params:
    """`Params` from a dict; a ConfigError listing every bad key (`what`: the message's start)."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{what} (fix these keys):\n" + "\n".join(lines)) from None


def load(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read `params.yaml` (or another file) into a validated `Params`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return resolve(raw, profile=profile, source=str(path))


def override(params: Params, updates: Mapping[str, Any]) -> Params:
    """`params` with typed updates applied, validated again: {"model.deter": 1024, "data.ssv2.src": "/v"}.

    A dotted key names one parameter (a value for a section, e.g. {"finetune.bonus": {"k": 8}}, updates
    the keys it names). Values are not parsed: the CLI parses `--set KEY=VALUE` once, at its boundary.
    """
    raw = params.model_dump()
    for key, value in updates.items():
        *parents, leaf = key.split(".")
        node = raw
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: '{'.'.join(parents[: i + 1])}' is not a parameter section")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"{key}: unknown parameter '{key}'")
        is_section = isinstance(value, Mapping) and isinstance(node[leaf], dict)
        node[leaf] = _merge(node[leaf], dict(value)) if is_section else copy.deepcopy(value)
    return _validate(raw, "invalid value")
