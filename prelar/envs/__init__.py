"""Environments: Meta-world v3 tasks as gymnasium envs that observe 64x64 RGB frames."""

from prelar.envs.metaworld import MetaworldEnv, expert_policy, make_env, scripted_tasks

__all__ = ["MetaworldEnv", "expert_policy", "make_env", "scripted_tasks"]
