"""The learning loop end to end on the local backend: real rollouts through ChatWandb, real RL
jobs, real checkpoints; what is served is what the server resolves ``:production`` to. The
evaluation is scripted per checkpoint (a real call to the checkpoint, then a set score), so
the gate's decisions are known in advance."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from langchain_wandb import ChatWandb
from wandb_serverless import TrainableModel
from wandb_serverless.learning import LearningLoop, Sampling

pytestmark = pytest.mark.slow

# held-out scores per checkpoint; checkpoint 2's evaluation fails (its rollout function raises)
SCRIPTED = {0: 0.50, 1: 0.80, 2: None, 3: 0.78, 4: 0.79}


def served_step(backend, tm: TrainableModel) -> int | None:
    """The step the server resolves the alias to, as /v1/models shows it (vLLM's card: an
    alias's ``root`` is the checkpoint it serves)."""
    models = httpx.get(
        f"{backend.base_url}/models", headers={"Authorization": f"Bearer {backend.api_key}"}
    ).json()["data"]
    card = next((m for m in models if m["id"] == tm.ref_for("production")), None)
    if card is None:
        return None
    return int(card["root"].rsplit(":step", 1)[1])


def make_loop(backend, tmp_path, **options) -> tuple[LearningLoop, TrainableModel, list]:
    tm = TrainableModel(
        f"loop-{uuid.uuid4().hex[:6]}", "e2e", backend.model_id, client=backend.client(),
        history_dir=tmp_path, progress=False,
    )  # fmt: skip
    calls: list[tuple[str, bool, int]] = []

    async def play(city: str, sampling: Sampling) -> float:
        llm = ChatWandb(model=sampling.model, base_url=backend.base_url, api_key=backend.api_key,
                        temperature=1.0, max_tokens=6, seed=sampling.seed)  # fmt: skip
        reply = await llm.ainvoke(f"Name a place near {city}.")
        calls.append((sampling.model, sampling.evaluation, sampling.policy_step))
        if sampling.evaluation:
            score = SCRIPTED[sampling.policy_step]
            if score is None:
                raise RuntimeError("the evaluation broke")
            return score
        return float(len(reply.content) % 2)  # varies within any group of samples

    loop = LearningLoop(
        tm, play, train_scenarios=["Paris", "Oslo", "Rome"], eval_scenarios=["Lima", "Cairo"],
        group_size=4, groups_per_step=2, max_rounds=2, tolerance=0.05,
        train_config={"learning_rate": 1e-4}, state_dir=tmp_path / "loop", progress=False,
        **options,
    )  # fmt: skip
    return loop, tm, calls


def test_only_what_the_gate_promotes_is_served_and_every_decision_is_recorded(
    backend, tmp_path, capsys
):
    loop, tm, calls = make_loop(backend, tmp_path)
    served_after: list[int | None] = []
    loop.on_step = lambda report: served_after.append(served_step(backend, tm))
    loop.progress = True
    reports = loop.run(steps=3)

    assert [r.checkpoint for r in reports] == [1, 2, 3] and tm.latest_step() == 3
    assert [r.decision for r in reports] == ["promoted", "rejected", "promoted"]
    assert "evaluation failed" in reports[1].reason
    assert served_after == [1, 1, 3]  # checkpoint 2 was never served
    assert loop.served_ref == tm.ref_for("production") and tm.served_step() == 3
    # the agent's calls went to pinned checkpoints: training from the newest, evaluation of each
    assert {(m, e) for m, e, _ in calls if e} == {(tm.ref_at(s), True) for s in (0, 1, 2, 3)}
    assert all(m == tm.ref_at(p) for m, _, p in calls)
    # a served alias answers chat like any model
    reply = ChatWandb(model=loop.served_ref, base_url=backend.base_url,
                      api_key=backend.api_key, max_tokens=2).invoke("hi")  # fmt: skip
    assert reply.response_metadata["model_name"] == tm.ref_for("production")

    # what a step cost, in the report, its progress line and the journal
    first = reports[0]
    assert first.rollouts >= 8 and first.prompt_tokens > 0 and first.completion_tokens > 0
    assert 0 < first.tokens_trained <= first.completion_tokens
    assert first.sampling_s > 0 and first.training_s > 0 and first.evaluating_s > 0
    assert first.eval_prompt_tokens > 0 and first.price_usd is None  # local: nothing billed
    assert reports[1].failed_rollouts == 0  # the training rollouts of step 2 were fine
    out = capsys.readouterr().out
    assert "step 2:" in out and "rejected (serving step 1" in out
    history = loop.history()
    events = [r["event"] for r in history]
    assert events.count("step") == 3 and events.count("trained") == 3
    evaluated = {r["checkpoint"]: r for r in history if r["event"] == "evaluated"}
    assert evaluated[2]["score"] is None and evaluated[2]["failed_rollouts"] == 2
    assert [r["checkpoint"] for r in history if r["event"] == "promoted"] == [0, 1, 3]
    metrics = [h for h in tm.history() if h.get("kind") == "loop"]
    assert len(metrics) == 3 and metrics[0]["loop/rollouts"] == first.rollouts

    # by hand: a rollback serves the one promoted before; a promotion serves what it names
    assert loop.rollback() == 1 and served_step(backend, tm) == 1
    assert loop.promote(2) == tm.ref_for("production") and served_step(backend, tm) == 2
    with pytest.raises(ValueError, match=r"no checkpoint at step 9 \(checkpoints: 1..3\)"):
        loop.promote(9)
    assert served_step(backend, tm) == 2
    hand = [r for r in loop.history() if r.get("by") == "hand"]
    assert [(r["event"], r.get("checkpoint", r.get("to"))) for r in hand] == [
        ("rollback", 1),
        ("promoted", 2),
    ]


def adapter_distance(backend, tm: TrainableModel, a: int, b: int) -> float:
    """How far apart two checkpoints' LoRA weights are (L2 over every tensor)."""
    from safetensors.torch import load_file

    state = backend.app.state.backend.state

    def weights(step: int) -> dict:
        return load_file(Path(state.checkpoint(tm.id, step).path) / "adapter_model.safetensors")

    wa, wb = weights(a), weights(b)
    return sum(float((wa[k] - wb[k]).float().pow(2).sum()) for k in wa) ** 0.5


def test_after_a_rejection_the_next_step_trains_on_a_copy_of_the_served_checkpoint(
    backend, tmp_path
):
    loop, tm, _ = make_loop(backend, tmp_path, after_rejection="restore", max_steps_off_policy=0)
    reports = loop.run(steps=3)
    assert [r.decision for r in reports] == ["promoted", "rejected", "promoted"]
    # step 3 sampled from the served checkpoint 1, trained on its copy (3) and made 4
    assert [r.checkpoint for r in reports] == [1, 2, 4] and reports[2].restored_from == 1
    history = loop.history()
    sampled = {r["step"]: r["policy_step"] for r in history if r["event"] == "sampled"}
    assert sampled == {1: 0, 2: 1, 3: 1}  # 3: from the served 1, not the rejected 2
    restored = [r for r in history if r["event"] == "restored"]
    assert [(r["checkpoint"], r["source"], r["rejected"]) for r in restored] == [(3, 1, 2)]
    training = {r["step"]: r["base_step"] for r in history if r["event"] == "training"}
    assert training == {1: 0, 2: 1, 3: 3}
    assert tm.served_step() == 4 and served_step(backend, tm) == 4
    # the copy holds checkpoint 1's weights; checkpoint 4 grew from them, not from 2's
    assert adapter_distance(backend, tm, 3, 1) == 0.0
    assert adapter_distance(backend, tm, 4, 1) < adapter_distance(backend, tm, 4, 2)
    copied = {c.step: c.metrics for c in tm.client.checkpoints.iter(tm.id)}
    assert copied[3] == {"copied_from_step": 1.0}
    assert "(on a copy of step 1)" in reports[2].line(0.05)


def test_the_next_step_samples_while_this_one_trains_within_the_bound(backend, tmp_path):
    loop, _, _ = make_loop(backend, tmp_path, max_steps_off_policy=1)
    reports = loop.run(steps=2)
    history = loop.history()
    sampled = {r["step"]: r for r in history if r["event"] == "sampled"}
    # step 2 sampled from the base model while step 1 trained (in turn, it would sample from 1)
    assert sampled[2]["policy_step"] == 0
    trajectories = [
        t for g in loop.store.groups(names=sampled[2]["groups"]) for t in g.trajectories
    ]
    assert {t.initial_policy_version for t in trajectories} == {0}
    assert reports[1].policy_step == 0 and reports[1].dropped_stale_groups == 0
    assert reports[1].checkpoint == 2  # one step off-policy is within the bound


def test_a_loop_in_an_event_loop_says_to_await_arun(backend, tmp_path):
    loop, _, _ = make_loop(backend, tmp_path)

    async def inside() -> None:
        loop.run(steps=1)

    with pytest.raises(RuntimeError, match=r"await loop.arun\(steps\)"):
        asyncio.run(inside())


def test_a_loop_for_one_role_trains_that_roles_turns_only(backend, tmp_path, monkeypatch):
    """Two roles in every rollout; the loop trains the speaker's model on the speaker's turns,
    the listener's are context (never sent as trainable turns)."""
    tm = TrainableModel(
        f"speaker-{uuid.uuid4().hex[:6]}", "e2e", backend.model_id, client=backend.client(),
        history_dir=tmp_path, progress=False,
    )  # fmt: skip

    async def play(city: str, sampling: Sampling) -> float:
        def chat(role: str, model: str) -> ChatWandb:
            return ChatWandb(model=model, role=role, base_url=backend.base_url,
                             api_key=backend.api_key, temperature=1.0, max_tokens=6,
                             seed=sampling.seed)  # fmt: skip

        said = await chat("speaker", sampling.model).ainvoke(f"Name a place near {city}.")
        await chat("listener", backend.model_id).ainvoke(f"Repeat: {said.content}")
        return float(len(said.content) % 2)

    sent: list = []
    monkeypatch.setattr(tm, "submit_rl", lambda groups, config=None: sent.append(groups) or
                        TrainableModel.submit_rl(tm, groups, config))  # fmt: skip
    loop = LearningLoop(
        tm, play, train_scenarios=["Paris", "Oslo"], eval_scenarios=["Lima"], group_size=4,
        groups_per_step=2, max_rounds=2, state_dir=tmp_path / "loop", progress=False,
        role="speaker", step_discount=0.5,
    )  # fmt: skip
    (report,) = loop.run(steps=1)
    assert report.checkpoint == 1
    turns = [c.model_extra["turn"] for g in sent[0] for t in g.trajectories
             for h in [t, *t.additional_histories] for c in h.choices()]  # fmt: skip
    assert turns and {t["role"] for t in turns} == {"speaker"}
    assert loop.history()[0]["settings"]["role"] == "speaker"
