"""A causal-LM recipe end to end on a tiny Llama: baseline, LoRA stage, perplexity,
answers scored against references, samples, reload, `kft generate` and `kft predict`."""

import json

import numpy as np
import pytest

import kft
from kft.errors import KftError
from kft.models.chat_format import DEFAULT_CHAT_TEMPLATE
from kft.runs import recipe as recipe_module
from kft.runs.compiling import compile_for_evaluation
from kft.runs import runner
from tests.helpers.cli import entry_point
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_tiny_gpt2_preset
from tests.helpers.gguf_files import write_llama_gguf
from tests.helpers.process import REPO

WORDS = ["Hello", "world", "the", "cat", "sat", "on", "mat", "Paris"]
ANSWER = "the cat sat on the mat"
RECIPE = REPO / "tests" / "helpers" / "recipes" / "tiny_causal_lm.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random Llama as GGUF, and 25 prompts that all have one answer."""
    root = tmp_path_factory.mktemp("causal_lm")
    # ChatML with the generation prompt (the helper's own template has none).
    model = write_llama_gguf(root / "tiny.gguf", tiny_llama_backbone(),
                             metadata={"tokenizer.chat_template": DEFAULT_CHAT_TEMPLATE})
    prompts = [f"{a} {b}" for a in WORDS[:5] for b in WORDS[3:]][:25]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": ANSWER}) + "\n"
                            for p in prompts))
    return root, {"model": model, "data": str(data)}


@pytest.fixture(scope="module")
def lora_run(files):
    root, overrides = files
    result = runner.run(recipe_module.load(RECIPE), overrides={**overrides, "epochs": 8,
                                                               "lr": 0.03},
                        output=str(root / "runs"), verbose=False)
    return result


def _json(run_dir, name):
    return json.loads((run_dir / name).read_text())


def _samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_the_run_reports_base_and_fine_tuned_perplexity_and_answers(lora_run):
    run_dir = lora_run.run_dir.path
    metrics, baseline = _json(run_dir, "metrics.json"), _json(run_dir, "baseline.json")

    assert baseline["kind"] == "base_model"
    # The random model's answers share little with the one answer; after
    # training on it, the held-out prompts (never trained on) get it.
    base, tuned = metrics["generation"]["base"], metrics["generation"]["fine_tuned"]
    assert base["rouge_l"] < 0.5
    assert tuned["rouge_l"] > 0.9 and tuned["bleu"] > 80, metrics["generation"]
    assert metrics["final"]["test_perplexity"] == pytest.approx(
        np.exp(metrics["final"]["test_loss"]))
    assert metrics["final"]["test_perplexity"] < baseline["test"]["perplexity"] / 10
    assert not (run_dir / "labels.json").exists()
    assert _json(run_dir, "generation.json") == {
        "kind": "pairs", "chat_format": True, "system_prompt": None}


def test_samples_hold_each_held_out_prompt_with_both_answers(lora_run):
    run_dir = lora_run.run_dir.path
    samples, baseline = _samples(run_dir), _json(run_dir, "baseline.json")
    assert len(samples) == 4 == _json(run_dir, "metrics.json")["generation"]["fine_tuned"][
        "examples"]
    assert all(row["reference"] == ANSWER for row in samples)
    assert [row["base"] for row in samples] == baseline["generation"]["answers"]
    # The held-out prompts are chat-formatted with the file's template.
    assert samples[0]["prompt"].startswith("<|im_start|>user\n")
    assert samples[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")

    # The saved model answers as the run's model did.
    reloaded = kft.saving.load_model(run_dir / "model.keras")
    answers = kft.text.generate(reloaded, [row["prompt"] for row in samples], max_tokens=8)
    assert answers == [row["fine_tuned"] for row in samples]


def test_lora_trained_only_the_adapters(lora_run, files):
    recipe = recipe_module.load(RECIPE)
    params = recipe.resolve(files[1])
    untrained = recipe.build_model(params, recipe.build_data(params))
    before = {v.path: np.array(v) for v in untrained.weights}
    after = {v.path: np.array(v) for v in lora_run.model.weights}
    assert [path for path in after if "lora_b" in path]
    for path, value in after.items():
        if "lora_b" in path:
            assert not np.array_equal(value, before[path]), path
        elif "lora" not in path and "seed_generator" not in path:
            np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_generate_formats_user_prompts_as_the_run_trained(lora_run):
    run_dir = lora_run.run_dir.path
    data = kft.data.instructions.load(
        _json(run_dir, "params.json")["data"], validation_split=0.2, test_split=0.2)
    users = [example.prompt for example in data.test[:4]]
    answers = kft.inference.generate(run_dir, users, max_tokens=8)
    assert answers == [row["fine_tuned"] for row in _samples(run_dir)]
    found = kft.inference.predict(run_dir, texts=users[:2])
    assert found.kind == "generation"
    assert [row.answer for row in found.rows] == answers[:2]
    assert found.rows[0].as_dict() == {"input": "--text 1", "text": users[0],
                                       "answer": answers[0]}


def test_a_lora_run_exports_merged_as_a_keras_hub_preset(lora_run, tmp_path, monkeypatch,
                                                         capsys):
    import keras_hub

    run_dir = lora_run.run_dir.path
    status, out, _ = entry_point(monkeypatch, capsys, "export", run_dir, "--to",
                                 tmp_path / "models", "--format", "keras-hub")
    assert status == 0 and "models/tiny_causal_lm/1" in out
    plain = keras_hub.models.CausalLM.from_preset(str(tmp_path / "models/tiny_causal_lm/1"))
    assert not kft.peft.lora_layers(plain)
    assert type(plain.preprocessor) is keras_hub.models.LlamaCausalLMPreprocessor
    samples = _samples(run_dir)
    assert kft.text.generate(plain, [row["prompt"] for row in samples], max_tokens=8) == \
        [row["fine_tuned"] for row in samples]
    # keras-hub 0.32 writes no Llama 2 (only Llama 3) in Hugging Face format.
    with pytest.raises(KftError, match="keras-hub cannot write a LlamaBackbone"):
        kft.export.export_run_causal_lm(run_dir, tmp_path / "hf", "transformers")
    assert not list((tmp_path / "hf" / "tiny_causal_lm").iterdir())
    # Serving formats are for classifiers: one line, exit status 2.
    status, _, err = entry_point(monkeypatch, capsys, "export", run_dir, "--to",
                                 tmp_path / "serving")
    assert status == 2 and "is a causal-LM run: export it with --format keras-hub" in err


def test_kft_generate_prints_answers_and_refuses_a_classifier(lora_run, monkeypatch, capsys,
                                                               tmp_path):
    run_dir = lora_run.run_dir.path
    status, out, _ = entry_point(monkeypatch, capsys, "generate", run_dir, "the cat",
                                 "--max-tokens", "8")
    assert status == 0
    assert out.strip() == ANSWER

    import keras

    classifier = tmp_path / "classifier"
    classifier.mkdir()
    keras.Sequential([keras.Input((8, 8, 3), dtype="uint8"), keras.layers.Flatten(),
                      keras.layers.Dense(2, activation="softmax")]).save(classifier / "model.keras")
    status, _, err = entry_point(monkeypatch, capsys, "generate", classifier, "hello")
    assert status == 2
    assert "holds an image model, which classifies: kft generate answers with a causal-LM " \
        "run" in err
    with pytest.raises(KftError, match="max_tokens must be a whole number >= 1"):
        kft.inference.generate(run_dir, ["the cat"], max_tokens=0)


def test_gpt2_domain_recipe_lowers_perplexity_on_real_english(tmp_path):
    from kft.data.datasets import sentiment_sentences

    texts, _ = sentiment_sentences.load_rows(("yelp",))
    # Real review sentences, five to a paragraph: 200 documents.
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n\n".join(" ".join(texts[i:i + 5]) for i in range(0, 1000, 5)))
    # Forgetting is measured on other text: 100 IMDB sentences, ten to a paragraph.
    imdb, _ = sentiment_sentences.load_rows(("imdb",))
    general = tmp_path / "general.txt"
    general.write_text("\n\n".join(" ".join(imdb[i:i + 10]) for i in range(0, 100, 10)))
    model = write_tiny_gpt2_preset(tmp_path / "gpt2")
    recipe = recipe_module.load(REPO / "recipes" / "gpt2_domain.py")
    overrides = {"model": model, "sequence_length": 32, "batch_size": 16, "epochs": 2,
                 "lr": 3e-3, "forgetting": str(general)}
    result = runner.run(recipe, data=str(corpus), overrides=overrides,
                        output=str(tmp_path / "runs"), verbose=False)
    run_dir = result.run_dir.path
    metrics, baseline = _json(run_dir, "metrics.json"), _json(run_dir, "baseline.json")
    before, after = baseline["test"]["perplexity"], metrics["final"]["test_perplexity"]
    print(f"held-out perplexity: {before:.1f} before, {after:.1f} after")
    assert after < before / 2

    # The general text's perplexity before is the preset's own, after the tuned model's.
    forgot = _json(run_dir, "forgetting.json")
    print(f"general-text perplexity: {forgot['before']:.1f} before, {forgot['after']:.1f} after")
    assert forgot["measure"] == "perplexity" and forgot["reference"] == str(general)
    assert metrics["forgetting"]["lost"] == pytest.approx(forgot["after"] - forgot["before"])
    params = recipe.resolve(overrides, data=str(corpus))
    fresh = recipe.build_model(params, None)
    recipe.fit_data(recipe.build_data(params), fresh, params)
    compile_for_evaluation(fresh, recipe)
    reference = recipe.build_forgetting(params)[1]
    assert kft.evaluation.forgetting.perplexity(fresh, reference) == pytest.approx(
        forgot["before"], rel=1e-4)
    assert kft.evaluation.forgetting.perplexity(result.model, reference) == pytest.approx(
        forgot["after"], rel=1e-4)
    # Documents have no prompts: no answers to score, continuations as written.
    assert "generation" not in metrics and not (run_dir / "samples.jsonl").exists()
    assert _json(run_dir, "generation.json")["chat_format"] is False
    answer = kft.text.generate(result.model, ["The food was"], max_tokens=5)
    assert kft.inference.generate(run_dir, ["The food was"], max_tokens=5) == answer

    # The tuned model leaves kft: a keras-hub preset and a Hugging Face folder.
    import keras_hub

    preset = kft.export.export_run_causal_lm(run_dir, tmp_path / "models")
    assert preset == tmp_path / "models" / "gpt2_domain" / "1"
    plain = keras_hub.models.CausalLM.from_preset(str(preset))
    assert type(plain.preprocessor) is keras_hub.models.GPT2CausalLMPreprocessor
    assert kft.text.generate(plain, ["The food was"], max_tokens=5) == answer
    hf = kft.export.export_run_causal_lm(run_dir, tmp_path / "hf", "transformers")
    assert {"config.json", "model.safetensors"} <= {p.name for p in hf.iterdir()}
    reread = kft.text.causal_lm(str(hf), sequence_length=32)
    x = plain.preprocessor.generate_preprocess(["The food was"], sequence_length=12)
    np.testing.assert_allclose(reread(x), plain(x), atol=1e-5)


def test_gpt2_domain_recipe_needs_a_corpus():
    with pytest.raises(KftError, match="Pass the corpus: kft run recipes/gpt2_domain.py"):
        runner.run(recipe_module.load(REPO / "recipes" / "gpt2_domain.py"), verbose=False)


def test_a_long_prompt_is_shortened_and_counted_never_its_response(files):
    model = kft.text.causal_lm(files[1]["model"], sequence_length=64)
    long_prompt = " ".join(WORDS * 8)
    data = kft.data.instructions.from_lists([long_prompt, "the cat"], [ANSWER, ANSWER], 0, 0)
    batches = data.run_data(model)
    assert data.packing == {"examples": 2, "prompts_truncated": 1, "dropped": 0}
    x, y, weights = next(iter(batches.train))
    assert x["token_ids"].shape[1] == 64
    # Both responses (and their end-of-turn tokens) keep their weight.
    response = len(model.preprocessor.tokenizer(ANSWER)) + 1
    assert np.asarray(weights).sum(axis=1).tolist() == [response, response]


def test_chat_data_for_a_tokenizer_without_chat_tokens_is_refused(files, tmp_path):
    gpt2 = kft.text.causal_lm(write_tiny_gpt2_preset(tmp_path / "gpt2"), sequence_length=24)
    data = kft.data.instructions.from_lists(["the cat", "on the mat"], [ANSWER, ANSWER], 0, 0)
    with pytest.raises(KftError, match="no chat template, and its tokenizer splits the default"):
        data.run_data(gpt2)
    data.chat_format = False
    assert data.run_data(gpt2).num_train == 2


def test_lr_find_sweeps_a_causal_lm_recipe(files, tmp_path):
    from kft.runs.lr_find import find_learning_rate

    result, run_dir = find_learning_rate(recipe_module.load(RECIPE), 1, overrides=files[1],
                                         output=str(tmp_path), num_steps=6, start_lr=1e-4,
                                         end_lr=1.0)
    assert len(result.lrs) == len(result.losses) > 0
    assert (run_dir.path / "lr_find.png").is_file()


def _recipe_with(**changes):
    import dataclasses

    return dataclasses.replace(recipe_module.load(RECIPE), **changes)


def _drift_from_base(model, prompts):
    """Mean absolute change of the next-token log-probabilities that the adapters make."""
    import keras

    x, _, _ = model.preprocessor(prompts)
    tuned = keras.ops.log_softmax(model(x, training=False), axis=-1)
    with kft.peft.without_adapters(model):
        base = keras.ops.log_softmax(model(x, training=False), axis=-1)
    return float(np.mean(np.abs(keras.ops.convert_to_numpy(tuned - base))))


@pytest.mark.slow
def test_kl_keeps_a_lora_run_closer_to_its_base_model(files):
    root, overrides = files
    drift = {}
    for name, regularize in (("plain", None), ("kl", "kl:1.0")):
        recipe = _recipe_with(stages=lambda p, r=regularize: [
            kft.Stage("tune", epochs=3, train="adapters", lr=0.03, regularize=r)])
        result = runner.run(recipe, overrides=overrides, output=str(root / f"kl-{name}"),
                            verbose=False)
        history = (result.run_dir.path / "history.csv").read_text().splitlines()
        assert ("kl_penalty" in history[0]) == (name == "kl")
        drift[name] = _drift_from_base(result.model, ["Hello cat", "the mat on"])
        assert np.isfinite(result.metrics["final"]["val_loss"])
    assert 0 < drift["kl"] < 0.7 * drift["plain"], drift


@pytest.mark.slow
def test_a_mixed_precision_run_trains_scores_and_reloads(files):
    root, overrides = files
    result = runner.run(recipe_module.load(RECIPE),
                        overrides={**overrides, "precision": "mixed_bfloat16", "epochs": 1},
                        output=str(root / "mixed"), verbose=False)
    assert result.run_dir.read_json("params.json")["precision"] == "mixed_bfloat16"
    final = result.metrics["final"]
    assert np.isfinite(final["test_perplexity"]) and final["test_perplexity"] > 1, final
    reloaded = kft.saving.load_model(result.run_dir.final_model)
    x, _, _ = reloaded.preprocessor(["Hello cat"])
    np.testing.assert_allclose(reloaded(x), result.model(x), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_kft_tune_searches_a_causal_lm_recipe_on_val_loss(files):
    from kft import tuning

    root, overrides = files
    recipe = _recipe_with(search={"lr": tuning.LogUniform(1e-3, 3e-2)})
    found = tuning.tune(recipe, trials=2, overrides={**overrides, "epochs": 1}, seed=1,
                        output=str(root / "tune"), verbose=False)
    assert [row.status for row in found.trials] == ["completed", "completed"]
    scores = [row.score for row in found.trials]
    assert all(np.isfinite(score) for score in scores)
    # The objective is the recipe's monitor, val_loss: the best trial has the lowest.
    assert found.best.score == min(scores)
    assert 1e-3 <= found.best_params["lr"] <= 3e-2
