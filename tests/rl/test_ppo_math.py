"""GAE and the PPO loss against plain-Python / torch references."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from rotax.rl import advantages
from rotax.rl.ppo import loss as ppo_losses
from rotax.models import value_head


def gae_reference(rewards, values, dones, last_value, gamma, lam):
    """Plain-Python GAE over one stream (lists of floats)."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = last_value if t == n - 1 else values[t + 1]
        alive = 0.0 if dones[t] else 1.0
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_python_reference_with_episode_boundaries(seed):
    rng = np.random.default_rng(seed)
    t, streams = 23, 4
    rewards = rng.choice([-3.0, -2.0, -1.0, 1.0, 5.0], size=(t, streams)).astype(np.float32)
    values = rng.normal(size=(t, streams)).astype(np.float32)
    dones = rng.random((t, streams)) < 0.3  # several episodes per stream
    dones[-1, 0] = True  # one stream ends exactly at the buffer end, others are cut
    last = rng.normal(size=(streams,)).astype(np.float32)
    adv, ret = jax.jit(advantages.gae, static_argnums=(4, 5))(rewards, values, dones, last, 0.9, 0.95)
    for s in range(streams):
        ref_adv, ref_ret = gae_reference(rewards[:, s].tolist(), values[:, s].tolist(),
                                         dones[:, s].tolist(), float(last[s]), 0.9, 0.95)
        np.testing.assert_allclose(np.asarray(adv[:, s]), ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret[:, s]), ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_terminal_step_ignores_next_episode():
    # Two one-step episodes back to back: each advantage is just r - V.
    adv, _ = advantages.gae(np.array([5.0, -1.0]), np.array([1.0, 2.0]), np.array([True, True]),
                            np.array(100.0), 0.9, 0.95)
    np.testing.assert_allclose(np.asarray(adv), [4.0, -3.0])


def test_normalize_uses_unbiased_std_over_mask():
    x = np.array([1.0, 2.0, 3.0, 4.0, 99.0], np.float32)
    mask = np.array([1, 1, 1, 1, 0], bool)
    out = np.asarray(advantages.normalize(x, mask))
    ref = (x[:4] - x[:4].mean()) / (x[:4].std(ddof=1) + 1e-5)
    np.testing.assert_allclose(out[:4], ref, rtol=1e-6)
    assert out[4] == 0.0


def test_value_head_shapes_and_torch_parity():
    torch = pytest.importorskip("torch")
    h = 64
    params = value_head.init_value_head(h, jax.random.PRNGKey(0))
    assert params["fc1"]["weight"].shape == (16, 64) and params["fc2"]["weight"].shape == (8, 16)
    assert params["fc3"]["weight"].shape == (1, 8)
    x = np.random.default_rng(0).normal(size=(3, 5, h)).astype(np.float32)
    out = np.asarray(value_head.apply_value_head(params, jnp.asarray(x)))
    net = torch.nn.Sequential(torch.nn.Linear(h, h // 4), torch.nn.ReLU(),
                              torch.nn.Linear(h // 4, h // 8), torch.nn.ReLU(),
                              torch.nn.Linear(h // 8, 1))
    with torch.no_grad():
        for layer, name in zip((net[0], net[2], net[4]), value_head.LAYERS):
            layer.weight.copy_(torch.from_numpy(np.array(params[name]["weight"])))
            layer.bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
        ref = net(torch.from_numpy(x))[..., 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the loss vs torch


def torch_ppo_loss(torch, logits, targets, weight, mask, value, batch, cfg):
    """Independent torch implementation of the documented objective."""
    logp_all = torch.log_softmax(logits / cfg.temperature, dim=-1)
    logp = torch.gather(logp_all, -1, targets[..., None])[..., 0]
    rows = batch["row_mask"]
    n_rows = rows.sum().clamp(min=1)
    n_tok = mask.sum().clamp(min=1)
    new = (logp * weight).sum(-1)
    ratio = torch.exp((new - batch["old_logprob"]) * rows)
    adv = batch["advantage"]
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip_epsilon, 1 + cfg.clip_epsilon) * adv)
    policy = -(surr * rows).sum() / n_rows
    vc = batch["old_value"] + (value - batch["old_value"]).clamp(-cfg.value_clip_epsilon, cfg.value_clip_epsilon)
    vl = 0.5 * (torch.maximum((value - batch["returns"]) ** 2, (vc - batch["returns"]) ** 2) * rows).sum() / n_rows
    ent = (-(logp_all.exp() * logp_all).sum(-1) * mask).sum() / n_tok
    d = batch["ref"] - logp
    kl = ((d.exp() - d - 1) * mask).sum() / n_tok if cfg.kl_estimator == "k3" else ((logp - batch["ref"]) * mask).sum() / n_tok
    return policy + cfg.value_coef * vl - cfg.entropy_coef * ent + cfg.kl_coef * kl


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_ppo_loss_and_gradient_match_torch(estimator):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    b, r, v = 4, 6, 11
    logits = rng.normal(size=(b, r, v)).astype(np.float32) * 3
    targets = rng.integers(0, v, size=(b, r)).astype(np.int64)
    lengths = np.array([6, 3, 1, 4])
    mask = (np.arange(r)[None] < lengths[:, None]).astype(np.float32)
    mask[3] = 0.0  # a padded row
    weight = mask * np.where(np.arange(r)[None] < 2, 0.5, 1.0).astype(np.float32)
    row_mask = np.array([1, 1, 1, 0], np.float32)
    value = rng.normal(size=(b,)).astype(np.float32)
    base = jax.nn.log_softmax(jnp.asarray(logits) / 0.2)
    chosen = np.take_along_axis(np.asarray(base), targets[..., None], -1)[..., 0]
    # old log-probs near the new ones so some ratios are clipped and some are not
    old = (chosen * weight).sum(-1) + rng.normal(scale=0.15, size=(b,)).astype(np.float32)
    batch = dict(old_logprob=old.astype(np.float32), old_value=(value + rng.normal(scale=0.2, size=b)).astype(np.float32),
                 advantage=rng.normal(size=b).astype(np.float32), returns=rng.normal(size=b).astype(np.float32),
                 row_mask=row_mask, ref=(chosen + rng.normal(scale=0.3, size=(b, r))).astype(np.float32))
    cfg = ppo_losses.LossConfig(clip_epsilon=0.1, value_clip_epsilon=0.1, value_coef=0.5,
                                entropy_coef=0.01, kl_coef=0.05, kl_estimator=estimator, temperature=0.2)

    def jax_loss(logits, value):
        logp, ent = ppo_losses.token_logprobs(logits, jnp.asarray(targets, jnp.int32), cfg.temperature, True)
        step = ppo_losses.StepBatch(jnp.asarray(weight), jnp.asarray(mask), batch["old_logprob"],
                                    batch["old_value"], batch["advantage"], batch["returns"],
                                    jnp.asarray(row_mask), batch["ref"])
        loss, _ = ppo_losses.ppo_loss(logp, ent, value, step, cfg, jnp.sum(row_mask), jnp.sum(mask))
        return loss

    loss, (g_logits, g_value) = jax.value_and_grad(jax_loss, argnums=(0, 1))(jnp.asarray(logits), jnp.asarray(value))
    t_logits = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t_value = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    tb = {k: torch.tensor(x, dtype=torch.float64) for k, x in batch.items()}
    t_loss = torch_ppo_loss(torch, t_logits, torch.from_numpy(targets), torch.tensor(weight, dtype=torch.float64),
                            torch.tensor(mask, dtype=torch.float64), t_value, tb, cfg)
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_logits), t_logits.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_value), t_value.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed, count", [(0, 37), (1, 1), (2, 64)])
def test_advantage_statistics_match_numpy_and_scipy(seed, count):
    from scipy import stats

    from rotax.rl.ppo.update import ADVANTAGE_QUANTILES, advantage_statistics

    rng = np.random.default_rng(seed)
    raw = rng.gamma(0.7, 2.0, size=64).astype(np.float32) - 1.0  # skewed, with ties at none
    mask = np.zeros(64, np.float32)
    mask[rng.permutation(64)[:count]] = 1.0
    raw_padded = np.where(mask > 0, raw, 123.0).astype(np.float32)  # padding must not count
    got = {k: float(v) for k, v in jax.jit(advantage_statistics)(raw_padded, mask).items()}
    kept = raw[mask > 0].astype(np.float64)
    assert got["advantage_mean"] == pytest.approx(kept.mean(), rel=1e-5, abs=1e-6)
    assert got["advantage_positive_share"] == pytest.approx(np.mean(kept > 0))
    if count > 2:
        assert got["advantage_std"] == pytest.approx(kept.std(ddof=1), rel=1e-5)
        assert got["advantage_skewness"] == pytest.approx(stats.skew(kept, bias=True), rel=1e-4, abs=1e-5)
    for q in ADVANTAGE_QUANTILES:
        assert got[f"advantage_p{round(100 * q):02d}"] == pytest.approx(np.quantile(kept, q), rel=1e-5, abs=1e-6), q


def test_masked_quantiles_of_nothing_are_zero():
    out = advantages.masked_quantiles(jnp.ones(5), jnp.zeros(5), (0.05, 0.5))
    np.testing.assert_array_equal(np.asarray(out), [0.0, 0.0])
