import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain import point_mass_clips

from prelar import config
from prelar.evaluate import prediction
from prelar.world_model import WorldModel

TINY = config.Model(cnn_width=8, deter=32, hidden=32, stoch=4, classes=4, latent_action_dim=8)
EVALUATE = config.Evaluate()  # context 5, horizon 20
CONTEXT, HORIZON, LENGTH = EVALUATE.context, EVALUATE.horizon, EVALUATE.window


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return np.stack(
        [c.frames for c in point_mass_clips(episodes=4, frames=LENGTH, cameras=1)]
    )  # [4,25,64,64,3]


def test_windows_are_cut_once_non_overlapping_in_order():
    long, short = np.arange(12)[:, None], np.arange(4)[:, None]  # "frames" [T, 1] that show their step
    cut = prediction.windows([{"frames": long}, {"frames": short}, {"frames": long + 100}], 5, limit=3)
    assert cut["frames"][:, :, 0].tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [100, 101, 102, 103, 104]]
    assert cut["is_first"].tolist() == [[True] + [False] * 4, [False] * 5, [True] + [False] * 4]
    with pytest.raises(ValueError, match="5 frames"):
        prediction.windows([{"frames": short}], 5, limit=1)


def test_copy_last_frame_yardstick_is_the_open_loop_error_of_repeating_the_context(clips):
    frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)  # [4, 25, 3, 64, 64]
    still = frames[:, :1].repeat(1, LENGTH, 1, 1, 1)
    assert prediction.copy_last_frame_mse(still, CONTEXT).abs().max() == 0
    moving = prediction.copy_last_frame_mse(frames, CONTEXT)  # [4, H]
    assert moving.shape == (4, HORIZON) and moving[:, -1].min() > 0
    repeated = frames[:, CONTEXT - 1 : CONTEXT].expand(-1, HORIZON, -1, -1, -1)
    torch.testing.assert_close(moving, prediction.frame_mse(repeated, frames[:, CONTEXT:]))


def test_psnr_of_pixel_values_in_unit_range():
    assert prediction.psnr(torch.tensor([0.01, 1.0])).tolist() == pytest.approx([20.0, 0.0])


def test_evaluate_prediction_metrics_and_figures(clips, tmp_path):
    torch.manual_seed(0)
    result = prediction.evaluate_prediction(WorldModel(TINY), clips, tmp_path, CONTEXT)
    assert result["pred_clips"] == 4
    assert {"pred_psnr_h1", "pred_psnr_h5", "pred_psnr_h10", "pred_psnr_h20", "delta_psnr"} <= result.keys()
    assert all(np.isfinite(v) for v in result.values())
    assert result["pred_psnr"] == pytest.approx(-10 * np.log10(result["pred_mse"]), abs=3)  # mean of logs
    frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3)
    yardstick = prediction.copy_last_frame_mse(frames, CONTEXT).mean().item()
    assert result["pred_copy_last_frame_mse"] == pytest.approx(yardstick)
    for name in ("fig1a_one_start_three_actions.png", "fig1b_three_starts_one_action.png"):
        grid = np.asarray(Image.open(tmp_path / name))
        assert grid.shape == (4 * 64 * 2, (LENGTH * 64 + 2) * 2, 3)  # truth + 3 rows, 25 frames + a bar, x2
    gif = Image.open(tmp_path / "open_loop.gif")
    assert gif.n_frames == LENGTH and gif.size == (2 * 64 * 2, 4 * 64 * 2)


def test_controllability_is_zero_when_every_clip_has_the_same_actions(clips):
    torch.manual_seed(0)
    model = WorldModel(TINY)
    same = prediction.controllability(model, np.repeat(clips[:1], 3, axis=0), CONTEXT)
    assert torch.equal(same["delta_psnr"], torch.zeros(HORIZON))
    different = prediction.controllability(model, clips, CONTEXT)
    assert different["delta_psnr"].shape == (HORIZON,)
    assert not torch.equal(different["psnr_inferred"], different["psnr_shuffled"])  # the actions matter


def test_action_free_model_predicts_without_latent_actions(clips, tmp_path):
    torch.manual_seed(0)
    model = WorldModel(TINY.model_copy(update={"action_free": True}))
    result = prediction.evaluate_prediction(model, clips[:2], tmp_path, CONTEXT)
    assert "delta_psnr" not in result and np.isfinite(result["pred_psnr"])
    assert [p.name for p in tmp_path.iterdir()] == ["open_loop.gif"]
    with pytest.raises(ValueError, match="action-free"):
        prediction.controllability(model, clips, CONTEXT)
