"""`kft generate`: a causal-LM run's model answering new prompts."""

from kft.errors import KftError
from kft.inference.run_model import load
from kft.models import generation


def generate(run, prompts, max_tokens=64, temperature=None, top_p=None, top_k=None, seed=None,
             batch_size=16):
    """Answers prompts with a causal-LM run's final model, formatted as it was trained.

    A run on prompt/response pairs or chats was trained on its model's chat
    template: each prompt becomes a user turn (after the run's system prompt,
    if it had one) and the answer is the assistant's turn, ending at its
    end-of-turn token. A run on plain text continues each prompt as written.

    Args:
        run: a causal-LM run directory, or its `RunModel` (`kft.inference.load`).
        prompts: a list of strings.
        max_tokens, temperature, top_p, top_k, seed, batch_size: as for
            `kft.text.generate` (greedy unless told otherwise).

    Returns:
        A list of answers, one per prompt.

    Raises:
        KftError: the run is not a causal-LM run, or an option is out of range.

    Example:
    ```python
    kft.inference.generate("runs/support_bot-20261203-120000",
                           ["My laptop will not turn on."], max_tokens=48)
    ```
    """
    run = load(run)
    if run.kind != "causal_lm":
        raise KftError(
            f"{run.run_dir} holds {'an' if run.kind == 'image' else 'a'} {run.kind} model, "
            "which classifies: kft generate answers "
            "with a causal-LM run (a recipe whose data is kft.data.instructions).")
    settings = run.generation or {}
    return generation.generate(
        run.model, list(prompts), max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        top_k=top_k, seed=seed, batch_size=batch_size,
        chat=bool(settings.get("chat_format", False)),
        system_prompt=settings.get("system_prompt"))
