"""Scorer: RM tokenizer/template, question-side truncation, rewards = mapping(probs), diagnostics, bad inputs."""

import threading

import pytest
import torch
from helpers_models import tiny_llama_config
from transformers import AutoTokenizer, LlamaModel

from moslim_plugin.core.directives import DirectiveError
from moslim_plugin.core.mappings import moslim
from moslim_plugin.core.rm import MultiHeadRewardModel
from moslim_plugin.core.scorer import Scorer, encode
from moslim_plugin.core.spec import load_spec

SPEC = load_spec("helpsteer")  # helpfulness 0-4, verbosity 0-4, harmlessness 0-1
QUESTIONS = ["What is the capital of France?", "Write a haiku about rain.", "How do I pick a lock?"]
RESPONSES = [
    "Paris.",
    "Soft rain on the roof / the gutters hum their one note / night drinks the city",
    "I can't help.",
]
REQUESTS = [{"helpfulness": 4}, {"verbosity": 0, "helpfulness": 2}, {"harmlessness": 1}]


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tiny_model(smol_tokenizer):
    """Random tiny Llama (weights do not matter here) sharing SmolLM2's real tokenizer and chat template."""
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(smol_tokenizer))
    return MultiHeadRewardModel(LlamaModel(config), SPEC).eval()


def model_probs(model, tokenizer, question, response, max_length=512):
    """Reference: one sample through the model on its own, softmax over each head's classes."""
    ids = torch.tensor([encode(tokenizer, question, response, max_length)["input_ids"]])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids)).softmax(-1)[0]


@pytest.mark.integration
def test_rewards_are_the_mapping_of_the_model_probabilities_in_any_batching(tiny_model, smol_tokenizer):
    scorer = Scorer(tiny_model, smol_tokenizer, batch_size=2)
    result = scorer.score(QUESTIONS, RESPONSES, REQUESTS)
    expected = torch.stack([model_probs(tiny_model, smol_tokenizer, q, r) for q, r in zip(QUESTIONS, RESPONSES)])
    torch.testing.assert_close(result.probs, expected, atol=1e-5, rtol=0)
    targets = torch.tensor([[4, -1, -1], [2, 0, -1], [-1, -1, 1]])
    assert torch.equal(result.targets, targets) and torch.equal(result.requested, targets >= 0)
    rewards, terms = moslim(expected, targets, torch.tensor(SPEC.levels), None)
    torch.testing.assert_close(result.rewards, rewards, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.terms, terms, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.expected_level, (expected * torch.arange(5.0)).sum(-1), atol=1e-5, rtol=0)
    assert result.rewards.dtype == torch.float32 and result.rewards.shape == (3,)
    one_by_one = torch.cat([scorer.score([q], [r], [t]).rewards for q, r, t in zip(QUESTIONS, RESPONSES, REQUESTS)])
    torch.testing.assert_close(one_by_one, result.rewards, atol=1e-4, rtol=0)


@pytest.mark.integration
def test_a_pair_scored_under_several_requests_is_classified_once(tiny_model, smol_tokenizer):
    """Relabelling scores each rollout under several requests: one RM row per distinct pair, the same rewards."""
    scorer = Scorer(tiny_model, smol_tokenizer, batch_size=2)
    rows_seen = []
    hook = tiny_model.register_forward_hook(
        lambda module, args, kwargs, out: rows_seen.append(len(out)), with_kwargs=True
    )
    try:
        owner = [0, 1, 2, 0, 0, 2]  # each pair first as itself, then as copies under other requests
        requests = REQUESTS + [{"verbosity": 4}, {"harmlessness": 0}, {"helpfulness": 0}]
        result = scorer.score([QUESTIONS[i] for i in owner], [RESPONSES[i] for i in owner], requests)
    finally:
        hook.remove()
    assert sum(rows_seen) == 3
    alone = [scorer.score([QUESTIONS[i]], [RESPONSES[i]], [rq]) for i, rq in zip(owner, requests)]
    torch.testing.assert_close(result.probs, torch.cat([a.probs for a in alone]), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.rewards, torch.cat([a.rewards for a in alone]), atol=1e-4, rtol=0)


@pytest.mark.integration
def test_smollm2_scorer_uses_the_rm_chat_template_and_reloads_from_its_checkpoint(smollm2_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = MultiHeadRewardModel.from_backbone(smollm2_dir, SPEC).eval()
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    ids = encode(tokenizer, QUESTIONS[0], RESPONSES[0], 512)["input_ids"]
    assert tokenizer.decode(ids).count("<|im_start|>assistant\nParis.<|im_end|>") == 1
    scorer = Scorer.from_pretrained(tmp_path, spec=SPEC)
    result = scorer.score(QUESTIONS[:2], RESPONSES[:2], REQUESTS[:2])
    torch.testing.assert_close(
        result.probs[0], model_probs(model, tokenizer, QUESTIONS[0], RESPONSES[0]), atol=1e-4, rtol=0
    )
    assert torch.isfinite(result.rewards).all()


@pytest.mark.integration
def test_minilm_scorer_pair_encodes_question_and_response(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    enc = encode(tokenizer, "Is it safe?", "Yes it is.", 512)
    assert tokenizer.decode(enc["input_ids"]) == "[CLS] is it safe? [SEP] yes it is. [SEP]"
    assert enc["token_type_ids"] == [0] * 6 + [1] * 5  # the response is segment B
    scorer = Scorer(MultiHeadRewardModel.from_backbone(minilm_dir, SPEC), tokenizer)
    result = scorer.score(QUESTIONS, RESPONSES, REQUESTS)
    assert result.probs.shape == (3, 3, 5) and torch.isfinite(result.rewards).all()
    torch.testing.assert_close(result.probs.sum(-1), torch.ones(3, 3))


@pytest.mark.unit
def test_numbered_words_put_each_response_words_index_before_it_and_keep_line_breaks_and_the_question(minilm_dir):
    from moslim_plugin.data.rm_rows import load_tokenizer

    tokenizer = load_tokenizer(minilm_dir)  # with its "\n" token, as train-rm saves it
    response = "- Sure,  it's\n- here!"
    numbered = encode(tokenizer, "What is it?", response, 512, number_words=True)
    assert numbered == dict(tokenizer("What is it?", "1 - 2 Sure,  3 it's\n4 - 5 here!"))
    assert numbered["input_ids"] != encode(tokenizer, "What is it?", response, 512)["input_ids"]
    decoded = tokenizer.decode(numbered["input_ids"])
    assert decoded == "[CLS] what is it? [SEP] 1 - 2 sure, 3 it ' s \n 4 - 5 here! [SEP]"


@pytest.mark.unit
@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_no_numeral_in_a_response_reads_as_a_word_index(which, smollm2_dir, minilm_dir):
    """Numbered words: the response's own digits are spelled out, so the digit tokens the RM reads in a response are
    its word indices and nothing else. Each numeral 1-100 appended or prepended to a short answer, and digits in other
    forms (superscript, fullwidth, circled, Arabic-Indic), leave exactly the digit tokens of a digit-free answer with
    as many words."""
    from moslim_plugin.data.rm_rows import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir if which == "smollm2" else minilm_dir)
    question, short = "What is it?", "Sure, it is a cat."

    def digit_tokens(response):
        ids = encode(tokenizer, question, response, 512, number_words=True)["input_ids"]
        return [t for t in tokenizer.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]

    words = len(short.split()) + 1
    expected = digit_tokens(" ".join(["word"] * words))
    assert expected  # the indices themselves are digits
    edited = [f"{short} {n}" for n in range(1, 101)] + [f"{n} {short}" for n in range(1, 101)]
    edited += [f"{short} {n}" for n in ("²¹", "２１", "②①", "٢١", "21.", "(21)", "#21", "1,000")]
    for text in edited:
        assert digit_tokens(text) == expected, text
    # The words themselves are still read: the spelled numeral is in the ids.
    ids = encode(tokenizer, question, f"{short} 21", 512, number_words=True)["input_ids"]
    assert "twoone" in tokenizer.decode(ids).replace(" ", "")


@pytest.mark.unit
@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_too_long_input_loses_the_start_of_the_question_never_the_response(which, smollm2_dir, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir if which == "smollm2" else minilm_dir)
    question = "BEGINNING " + "filler words here " * 60 + "the question END"
    response = "the whole response stays here"
    full = len(encode(tokenizer, question, response, 10_000)["input_ids"])
    ids = encode(tokenizer, question, response, full - 50)["input_ids"]
    text = tokenizer.decode(ids).lower()
    assert full - 60 <= len(ids) <= full - 50
    assert "the question end" in text and "beginning" not in text
    assert "the whole response stays here" in text


@pytest.mark.unit
def test_a_response_longer_than_max_length_keeps_its_start_up_to_the_limit_as_openrlhf_truncates(smol_tokenizer):
    from moslim_plugin.core.scorer import encode_truncated

    response = "START of a very long response " + "and more words " * 30
    ids, truncated = encode_truncated(smol_tokenizer, "short question", response, 40)
    text = smol_tokenizer.decode(ids["input_ids"])
    assert truncated and len(ids["input_ids"]) <= 40
    assert "START of a very long response" in text and "short question" not in text  # question dropped first
    assert encode_truncated(smol_tokenizer, "short question", "short answer", 40)[1] is False


@pytest.mark.integration
def test_diagnostics_average_over_the_samples_that_requested_each_objective(tiny_model, smol_tokenizer):
    result = Scorer(tiny_model, smol_tokenizer).score(QUESTIONS, RESPONSES, REQUESTS)
    diag = result.diagnostics()
    # helpfulness requested by samples 0 (level 4) and 1 (level 2); harmlessness by 2 only; verbosity by 1 only.
    p = result.probs
    assert diag["moslim/helpfulness/p_target"] == pytest.approx(((p[0, 0, 4] + p[1, 0, 2]) / 2).item())
    assert diag["moslim/harmlessness/p_target"] == pytest.approx(p[2, 2, 1].item())
    assert diag["moslim/verbosity/hit"] == float(p[1, 1].argmax() == 0)
    assert diag["moslim/helpfulness/term"] == pytest.approx(result.terms[:2, 0].mean().item())
    assert set(diag) == {f"moslim/{n}/{s}" for n in SPEC.names for s in ("p_target", "hit", "term")}
    only_one = Scorer(tiny_model, smol_tokenizer).score(QUESTIONS[:1], RESPONSES[:1], REQUESTS[:1]).diagnostics()
    assert set(only_one) == {"moslim/helpfulness/p_target", "moslim/helpfulness/hit", "moslim/helpfulness/term"}


@pytest.mark.integration
def test_running_statistics_belong_to_the_scorer_not_the_model(tiny_model, smol_tokenizer):
    scorer = Scorer(tiny_model, smol_tokenizer, mapping_kwargs='{"norm": "running"}')
    scorer.score(QUESTIONS, RESPONSES, REQUESTS)
    scorer.score(QUESTIONS[:1], RESPONSES[:1], REQUESTS[:1])
    assert scorer.stats.count[0, 0].item() == 4 and tiny_model.stats is None


def nan_mapping(probs, targets, levels, stats):
    rewards = torch.zeros(probs.shape[0])
    rewards[1] = float("nan")
    return rewards, torch.zeros(targets.shape)


@pytest.mark.integration
def test_a_non_finite_reward_raises_instead_of_reaching_training(tiny_model, smol_tokenizer):
    scorer = Scorer(tiny_model, smol_tokenizer, mapping=nan_mapping)
    with pytest.raises(FloatingPointError, match=r"non-finite rewards for samples \[1\]"):
        scorer.score(QUESTIONS, RESPONSES, REQUESTS)


@pytest.mark.integration
def test_concurrent_callers_get_the_same_rewards_as_sequential_ones(tiny_model, smol_tokenizer):
    scorer = Scorer(tiny_model, smol_tokenizer)
    sequential = [scorer.score([q], [r], [t]).rewards.item() for q, r, t in zip(QUESTIONS, RESPONSES, REQUESTS)]
    results = [None] * 3

    def call(i):
        results[i] = scorer.score([QUESTIONS[i]], [RESPONSES[i]], [REQUESTS[i]]).rewards.item()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == pytest.approx(sequential, abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize(
    "questions, responses, requests, error, message",
    [
        (["q"], ["r", "s"], [{}], ValueError, "same length, got 1, 2, 1"),
        ([], [], [], ValueError, "empty batch"),
        (["q"], [None], [{}], ValueError, r"responses\[0\] must be a string, got NoneType"),
        (["q"], ["r"], [{"humour": 1}], DirectiveError, "unknown objective 'humour'"),
        (["q"], ["r"], [{"harmlessness": 2}], DirectiveError, r"level 2 for 'harmlessness' is out of range.*0\.\.1"),
    ],
)
def test_bad_inputs_are_rejected_with_the_offending_value(
    tiny_model, smol_tokenizer, questions, responses, requests, error, message
):
    with pytest.raises(error, match=message):
        Scorer(tiny_model, smol_tokenizer).score(questions, responses, requests)


@pytest.mark.unit
def test_unknown_mapping_and_mapping_keyword_are_rejected(tiny_model, smol_tokenizer):
    with pytest.raises(ValueError, match="unknown mapping 'paper'; installed"):
        Scorer(tiny_model, smol_tokenizer, mapping="paper")
    with pytest.raises(ValueError, match=r"has no keyword\(s\) \['temperature'\]"):
        Scorer(tiny_model, smol_tokenizer, mapping_kwargs={"temperature": 2})
