import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain import point_mass_clips

from prelar import config
from prelar.evaluate import prediction
from prelar.world_model import WorldModel

TINY = config.Model(cnn_width=8, deter=32, hidden=32, stoch=4, classes=4, latent_action_dim=8)
LENGTH = prediction.CONTEXT + prediction.HORIZON


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return np.stack(
        [c.frames for c in point_mass_clips(episodes=4, frames=LENGTH, cameras=1)]
    )  # [4,25,64,64,3]


def test_psnr_of_pixel_values_in_unit_range():
    assert prediction.psnr(torch.tensor([0.01, 1.0])).tolist() == pytest.approx([20.0, 0.0])


def test_evaluate_prediction_metrics_and_figures(clips, tmp_path):
    torch.manual_seed(0)
    result = prediction.evaluate_prediction(WorldModel(TINY), clips, tmp_path)
    assert result["pred_clips"] == 4
    assert {"pred_psnr_h1", "pred_psnr_h5", "pred_psnr_h10", "pred_psnr_h20", "delta_psnr"} <= result.keys()
    assert all(np.isfinite(v) for v in result.values())
    assert result["pred_psnr"] == pytest.approx(-10 * np.log10(result["pred_mse"]), abs=3)  # mean of logs
    for name in ("fig1a_one_start_three_actions.png", "fig1b_three_starts_one_action.png"):
        grid = np.asarray(Image.open(tmp_path / name))
        assert grid.shape == (4 * 64 * 2, (LENGTH * 64 + 2) * 2, 3)  # truth + 3 rows, 25 frames + a bar, x2
    gif = Image.open(tmp_path / "open_loop.gif")
    assert gif.n_frames == LENGTH and gif.size == (2 * 64 * 2, 4 * 64 * 2)


def test_controllability_is_zero_when_every_clip_has_the_same_actions(clips):
    torch.manual_seed(0)
    model = WorldModel(TINY)
    same = prediction.controllability(model, np.repeat(clips[:1], 3, axis=0))
    assert torch.equal(same["delta_psnr"], torch.zeros(prediction.HORIZON))
    different = prediction.controllability(model, clips)
    assert different["delta_psnr"].shape == (prediction.HORIZON,)
    assert not torch.equal(different["psnr_inferred"], different["psnr_shuffled"])  # the actions matter


def test_action_free_model_predicts_without_latent_actions(clips, tmp_path):
    torch.manual_seed(0)
    model = WorldModel(TINY.model_copy(update={"action_free": True}))
    result = prediction.evaluate_prediction(model, clips[:2], tmp_path)
    assert "delta_psnr" not in result and np.isfinite(result["pred_psnr"])
    assert [p.name for p in tmp_path.iterdir()] == ["open_loop.gif"]
    with pytest.raises(ValueError, match="action-free"):
        prediction.controllability(model, clips)
