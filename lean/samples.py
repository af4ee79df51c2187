"""Sample texts that ship with lean, for checking a model when no task is at hand.

`lean export` compares the ONNX model with PyTorch on them, and `lean quantize` measures the
quantized model's output error on them, when the model has no task (no lean.json, no --task).
They vary on purpose: lengths from one word to past 128 tokens, several languages and scripts,
punctuation, numbers, emoji and markup, so that padding, truncation and unusual tokens are all
exercised. They are checks of agreement with the source model, never of accuracy.
"""

from __future__ import annotations

_LONG = (
    "The quarterly report, published on Tuesday, showed that revenue rose 4.2% to $1.37bn while "
    "operating costs fell for the third quarter running; analysts had expected a smaller rise, and "
    "the shares closed 6% higher. The chief executive said the company would keep investing in its "
    "data centres in Ireland, Finland and Singapore, but warned that energy prices, the strength of "
    "the dollar and new rules on data transfers could weigh on the second half. Staff numbers were "
    "broadly flat at 12,400, after hiring in engineering offset cuts in sales and marketing. The "
    "board proposed a dividend of 18p a share, payable in June, and a buyback of up to 500m shares "
    "over the next twelve months, subject to approval at the annual meeting."
)

SAMPLE_TEXTS: tuple[str, ...] = (
    "Hello.",
    "ok",
    "Shares in the bank rose after profits beat forecasts.",
    "The striker scored twice in the second half to send his side top of the league.",
    "New smartphone chips promise longer battery life and faster on-device AI.",
    "Parliament voted 312 to 290 on the amended bill late on Wednesday night.",
    "The film, a quiet drama about two sisters, won the festival's top prize!",
    "Is this the right way to ask a question?? I'm not sure... maybe not!",
    "Price: $19.99 (was $24.50) - save 18% until 31/12/2026; code SAVE-18.",
    "Great service 👍🏽 would come back 😀🎉 #happy @cafe_luna",
    "Le gouvernement a annoncé une hausse des impôts pour les entreprises les plus rentables.",
    "Die Mannschaft gewann das Finale nach Verlängerung mit 2:1.",
    "El nuevo museo abrirá sus puertas al público el próximo sábado.",
    "Правительство объявило о новых мерах поддержки малого бизнеса.",
    "新しいスマートフォンは来月発売される予定です。",
    "这家公司的利润在第三季度增长了百分之十二。",
    "أعلنت الحكومة عن خطة جديدة لتحسين البنية التحتية.",
    "नई ट्रेन सेवा अगले महीने से शुरू होगी।",
    "<p>Click <a href=\"https://example.com\">here</a> &amp; read more</p>",
    "def add(a, b):\n    return a + b  # tabs\tand newlines\n",
    "   leading and trailing spaces   ",
    "ALL CAPS HEADLINE: MARKETS FALL AS RATES RISE",
    "a " * 40 + "end",
    _LONG,
    _LONG + " " + _LONG,
)


def sample_texts() -> list[str]:
    """The shipped sample texts, in a fixed order."""
    return list(SAMPLE_TEXTS)
