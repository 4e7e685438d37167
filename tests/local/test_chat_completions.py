"""The official openai SDK, unchanged, against the local backend serving the real model."""

from __future__ import annotations

import openai
import pytest

from wandb_serverless.local.engine import wait_idle

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def test_completion_text_usage_and_logprobs_agree(oai, tokenizer):
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_token_ids": True},
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    token_ids = choice.model_extra["token_ids"]
    assert len(choice.logprobs.content) == reply.usage.completion_tokens == len(token_ids)
    assert all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)
    assert tokenizer.decode(token_ids, skip_special_tokens=True) == choice.message.content
    prompt_ids = reply.model_extra["prompt_token_ids"]
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 <= reply.usage.prompt_tokens_details.cached_tokens <= reply.usage.prompt_tokens


def test_a_repeated_prompt_reuses_its_cached_prefill_with_identical_output(oai):
    ask = [{"role": "user", "content": "Name three rivers in Europe."}]
    first = oai.chat.completions.create(
        model="default", messages=ask, max_tokens=16, temperature=0, seed=3
    )
    second = oai.chat.completions.create(
        model="default", messages=ask, max_tokens=16, temperature=0, seed=3
    )
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens
    assert second.choices[0].message.content == first.choices[0].message.content


def test_a_prompt_sharing_a_cached_prefix_decodes_as_if_computed_whole(oai, backend):
    system = {"role": "system", "content": "You answer questions about geography. " * 4}

    def ask(question: str):
        return oai.chat.completions.create(
            model="default",
            messages=[system, {"role": "user", "content": question}],
            max_tokens=12,
            temperature=0,
            logprobs=True,
        )

    ask("What is the capital of France?")
    shared = ask("What is the capital of Peru?")
    assert 30 < shared.usage.prompt_tokens_details.cached_tokens < shared.usage.prompt_tokens
    engine = backend.app.state.backend.engine
    assert wait_idle(engine)
    engine._prompts.clear()  # idle: nothing else reads it now
    whole = ask("What is the capital of Peru?")
    assert whole.usage.prompt_tokens_details.cached_tokens == 0
    assert shared.choices[0].message.content == whole.choices[0].message.content
    pairs = zip(shared.choices[0].logprobs.content, whole.choices[0].logprobs.content, strict=True)
    for a, b in pairs:
        assert abs(a.logprob - b.logprob) < 1e-4


def test_tokens_as_token_ids_name_each_sampled_id(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=8,
        logprobs=True,
        extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True},
    )
    choice = reply.choices[0]
    assert [e.token for e in choice.logprobs.content] == [
        f"token_id:{t}" for t in choice.model_extra["token_ids"]
    ]


def test_same_seed_same_request_gives_same_text(oai):
    kwargs = dict(
        model="default",
        messages=[{"role": "user", "content": "Write a story."}],
        max_tokens=24,
        temperature=1.0,
        seed=1234,
    )
    first = oai.chat.completions.create(**kwargs).choices[0].message.content
    second = oai.chat.completions.create(**kwargs).choices[0].message.content
    other = oai.chat.completions.create(**{**kwargs, "seed": 99}).choices[0].message.content
    assert first == second
    assert first != other


def test_stop_string_ends_the_completion_before_it(oai):
    reply = oai.chat.completions.create(
        model="default", messages=HELLO, max_tokens=24, temperature=0, stop=[" Paris"]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == " Paris"
    assert "Paris" not in choice.message.content and choice.message.content.startswith(
        "The capital"
    )


def test_stop_token_ids_and_include_stop_str(oai, tokenizer):
    period = tokenizer.convert_tokens_to_ids(".")
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=24,
        temperature=0,
        extra_body={"stop_token_ids": [period]},
    )
    assert reply.choices[0].model_extra["stop_reason"] == period
    kept = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=24,
        temperature=0,
        stop=["Paris"],
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].message.content.endswith("Paris")


def test_max_tokens_cuts_with_finish_reason_length(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Count from one to one hundred."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_min_tokens_and_ignore_eos_keep_generating(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=30,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage.completion_tokens == 30
    reply = oai.chat.completions.create(
        model="default", messages=HELLO, max_tokens=40, temperature=0, extra_body={"min_tokens": 20}
    )
    assert reply.usage.completion_tokens >= 20


def test_n_returns_independent_choices(oai):
    reply = oai.chat.completions.create(
        model="default", messages=HELLO, max_tokens=12, n=3, temperature=1.0, seed=7
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == sum(
        len(
            oai.chat.completions.create(
                model="default",
                messages=HELLO,
                max_tokens=12,
                temperature=1.0,
                seed=7 + i,
                logprobs=True,
            )
            .choices[0]
            .logprobs.content
        )
        for i in range(3)
    )


def test_sampling_extras_are_accepted(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=12,
        temperature=0.8,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"504": -100},
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2},
    )
    assert reply.choices[0].message.content
    assert not reply.choices[0].message.content.startswith("The")  # token 504 ("The") was banned


def test_roles_system_developer_and_repeated_roles_render(oai):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": [{"type": "text", "text": "Capital of Italy?"}]},
        {"role": "assistant", "content": "Rome"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "And France?"},
    ]
    reply = oai.chat.completions.create(model="default", messages=messages, max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_continue_final_message_extends_the_assistant_turn(oai):
    reply = oai.chat.completions.create(
        model="default",
        max_tokens=8,
        temperature=0,
        messages=[*HELLO, {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert "Paris" in reply.choices[0].message.content


def test_stream_chunks_add_up_with_one_final_usage_chunk(oai):
    chunks = list(
        oai.chat.completions.create(
            model="default",
            messages=HELLO,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = oai.chat.completions.create(
        model="default", messages=HELLO, max_tokens=24, temperature=0
    )
    assert text == whole.choices[0].message.content
    usage = [c for c in chunks if c.usage is not None]
    assert (
        len(usage) == 1
        and chunks[-1] is usage[0]
        and usage[0].usage.completion_tokens == whole.usage.completion_tokens
    )
    streamed_logprobs = sum(
        len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs
    )
    assert streamed_logprobs == whole.usage.completion_tokens
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]


async def test_async_client_and_async_stream(backend):
    client = openai.AsyncOpenAI(base_url=backend.base_url, api_key=backend.api_key)
    reply = await client.chat.completions.create(
        model="default", messages=HELLO, max_tokens=16, temperature=0
    )
    assert "Paris" in reply.choices[0].message.content
    stream = await client.chat.completions.create(
        model="default", messages=HELLO, max_tokens=16, temperature=0, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == reply.choices[0].message.content
    await client.close()


def test_models_lists_the_base_model(oai, backend):
    ids = [m.id for m in oai.models.list()]
    assert ids[0] == backend.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(
        i.startswith("wandb-artifact:///") for i in ids[1:]
    )  # checkpoints other tests trained
    reply = oai.chat.completions.create(model=backend.model_id, messages=HELLO, max_tokens=4)
    assert reply.model == backend.model_id


@pytest.mark.parametrize("path", ["/chat/completions", "/chat/completions/"])
def test_both_chat_paths_answer(backend, path):
    import httpx

    response = httpx.post(
        backend.base_url + path,
        json={"messages": HELLO, "max_tokens": 2},
        headers={"Authorization": f"Bearer {backend.api_key}"},
    )
    assert response.status_code == 200 and response.json()["object"] == "chat.completion"
