"""A tiny, offline stand-in for the LLaDA tokenizer, for tests and demos.

LLaDA-8B's real tokenizer has a ~126k vocabulary and has to be downloaded. Code that only
needs *a* tokenizer with LLaDA's special tokens and chat template (prompt building,
answer decoding, the test suite) can use :func:`build_tiny_tokenizer` instead: a byte-level
BPE model trained, in-process and without any download, on the small English corpus
embedded below. Every byte string is encodable (byte-level alphabet), so plain text
round-trips through ``encode``/``decode``.

The special tokens carry exactly LLaDA's strings, so code that looks ids up by token
string (never by LLaDA's 126k numbers) works with both tokenizers. Their ids differ: here
they are the first ids of the vocabulary (0..5), in LLaDA they sit above 126000.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "LLADA_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_VOCAB_SIZE",
    "build_tiny_tokenizer",
]

# LLaDA's chat template, verbatim from LLaDA-V's tokenizer_config.json. Every message becomes
# "<|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>", the first one is
# prefixed by the bos token, and the assistant header is always appended (there is no
# `add_generation_prompt` switch).
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)

# LLaDA's special token strings, by role. (Ids in the real tokenizer, for reference only:
# bos 126080, eos 126081, mask 126336, start_header 126346, end_header 126347, eot 126348.)
SPECIAL_TOKENS = MappingProxyType(
    {
        "bos": "<|startoftext|>",
        "eos": "<|endoftext|>",
        "mask": "<|mdm_mask|>",
        "start_header": "<|start_header_id|>",
        "end_header": "<|end_header_id|>",
        "eot": "<|eot_id|>",
    }
)

# Target size of the tiny vocabulary (special tokens + 256 byte symbols + learned merges).
TINY_VOCAB_SIZE = 512

_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language."
)

# The training corpus. Changing it changes every id of the tiny tokenizer.
_CORPUS = (
    _SYSTEM,
    "What is shown in this image?",
    "Describe the image in detail.",
    "What color is the car in the picture?",
    "How many people are standing next to the red bus?",
    "How many apples are on the table? Answer with a single number.",
    "What is the title of the chart?",
    "Which bar in the chart is the tallest, and what is its value?",
    "Is there a dog in the image? Answer yes or no.",
    "What is written on the sign above the door?",
    "Answer the question using a single word or phrase.",
    "The image shows a small white cat sitting on a blue chair.",
    "A red car is parked in front of a yellow house with a green door.",
    "There are three apples, two bananas and one orange on the wooden table.",
    "The chart shows the number of visitors per month; July has the highest value.",
    "Two children are playing with a ball in the park while their parents watch.",
    "The sky is blue and the grass is green; a few white clouds float above the hills.",
    "The bar chart compares the sales of four products in 2021 and 2022.",
    "A man in a black jacket is riding a bicycle down a busy city street.",
    "The photo was taken at night, and the street lights are orange.",
    "On the left side of the image there is a tall tree; on the right, a small house.",
    "The table lists the price, the weight and the colour of each item.",
    "A plate with a sandwich, a cup of coffee and a glass of water.",
    "The line in the graph goes up from 10 to 45 between 2010 and 2020.",
    "Count the birds: one, two, three, four, five, six, seven, eight, nine, ten.",
    "The woman is holding an umbrella because it is raining.",
    "A brown dog is running on the beach next to the sea.",
    "The text in the image says: Welcome to the museum of modern art.",
    "The pie chart shows that 40% of the budget goes to research.",
    "Yes, there is a dog in the image. No, there is no cat.",
    "The objects are a pencil, a book, a phone and a pair of glasses.",
    "The train is black and grey, and it is waiting at the station.",
    "The picture shows a kitchen with white walls, a window and a wooden floor.",
    "Please look at the image carefully and answer the question below.",
    "What is the difference between the largest and the smallest value in the chart?",
    "Where is the cat? The cat is under the table, next to the chair.",
    "Colours: red, orange, yellow, green, blue, purple, pink, brown, black, white, grey.",
    "Shapes: a circle, a square, a triangle and a rectangle are drawn on the paper.",
    "The answer is 12.",
    "The image contains 7 boats, 3 of which are red.",
    "The system message comes first, then the user asks and the assistant answers.",
    "system user assistant: the user gives an image, the assistant describes the image.",
)


def build_tiny_tokenizer():
    """Build the tiny LLaDA-like tokenizer (offline, deterministic, ~512 ids).

    Returns a ``transformers.PreTrainedTokenizerFast`` with:

    - a byte-level BPE model trained on the embedded corpus (``TINY_VOCAB_SIZE`` ids at most;
      building it twice gives the identical vocabulary and merges);
    - LLaDA's special tokens (:data:`SPECIAL_TOKENS`) as special added tokens, never split:
      bos ``<|startoftext|>``, eos and pad ``<|endoftext|>``, mask ``<|mdm_mask|>``
      (``tokenizer.convert_tokens_to_ids('<|mdm_mask|>')``), the header tokens and
      ``<|eot_id|>``;
    - ``add_bos_token = add_eos_token = False``: ``tokenizer(text).input_ids`` adds nothing,
      as with LLaDA's tokenizer;
    - ``chat_template = LLADA_CHAT_TEMPLATE``;
    - ``clean_up_tokenization_spaces=False``, so ``decode(encode(s)) == s`` for any text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["eos"],
        extra_special_tokens=[
            SPECIAL_TOKENS[k] for k in ("mask", "start_header", "end_header", "eot")
        ],
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )
    tokenizer.chat_template = LLADA_CHAT_TEMPLATE
    return tokenizer
