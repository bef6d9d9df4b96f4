"""The registry of methods and pre-training variants."""

import pytest

from prelar import config, methods


def test_every_method_loads_a_registered_variant_and_has_its_own_label():
    for m in methods.METHODS.values():
        assert m.variant is None or m.variant in methods.VARIANTS
        assert m.pretrained == (m.variant is not None)
    labels = [m.label for m in methods.METHODS.values()]
    assert len(set(labels)) == len(labels)
    assert methods.label("prelar_no_cl") == "PreLAR w/o CL" and methods.label("untrained") == "untrained"
    assert not methods.SCRATCH.pretrained
    # each variant is fine-tuned by the method of its name (the transfer stage relies on it)
    assert {v: methods.finetuned_by(v).name for v in methods.VARIANTS} == {v: v for v in methods.VARIANTS}


def test_checkpoint_expectations_follow_the_variant_switches():
    base = config.Model().model_dump()
    assert methods.fitting(base) == ["prelar"]
    assert methods.fitting({**base, "beta_r": 0.0}) == ["prelar"]  # other model values do not matter
    assert methods.fitting({**base, "use_consistency": False}) == ["prelar_no_cl"]
    assert methods.fitting({**base, "action_free": True}) == ["apv", "naive_ft"]
    assert methods.fitting({**base, "use_action_kl": False}) == []  # consistency without the action KL
    assert methods.method("naive_ft").mismatch(base) == {"action_free": False}
    assert methods.method("dreamerv2").mismatch(base) == {}


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown method 'ppo'; choose one of \['prelar'"):
        methods.method("ppo")
    with pytest.raises(ValueError, match="unknown pre-training variant 'naive_ft'"):
        methods.variant("naive_ft")  # a method, but not something pre-trained


def test_the_true_action_variant_fits_only_its_own_method_and_old_checkpoints_keep_theirs():
    base = config.Model().model_dump()
    true_action = {**base, "true_actions": True, "use_consistency": False, "use_action_kl": False}
    assert methods.fitting(true_action) == ["true_action"]  # not w/o CL & AL, whose switches it shares
    assert methods.method("prelar_no_cl_al").mismatch(true_action) == {"true_actions": True}
    # a checkpoint's model_config written before `true_actions` existed counts it as its default (False)
    old = {k: v for k, v in base.items() if k != "true_actions"}
    assert methods.fitting(old) == ["prelar"]
    with pytest.raises(ValueError, match="true_actions: the true action replaces the latent action"):
        config.Model(true_actions=True)  # with the action KL and the consistency loss still on
