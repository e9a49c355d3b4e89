"""Plain generation with a chat template: the one path training samples, chat and tests share."""

from __future__ import annotations

from typing import Any


def chat_reply(
    model: Any,
    tokenizer: Any,
    template: Any,
    messages: list[dict[str, str]],
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> str:
    """The model's next assistant turn for ``messages``, rendered with ``template`` (greedy at temperature 0)."""
    import torch

    prompt = template.render_text(
        messages,
        system=template.default_system if system is None else system,
        add_generation_prompt=True,
        tokenizer=tokenizer,
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    stop_ids = [tokenizer.eos_token_id] + [
        tid
        for word in template.stop_words
        if (tid := tokenizer.convert_tokens_to_ids(word)) is not None and tid != tokenizer.unk_token_id
    ]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(set(stop_ids)),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    if was_training:
        model.train()
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    for word in template.stop_words:
        text = text.split(word)[0]
    return text.strip()
