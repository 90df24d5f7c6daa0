"""Reference data for loading a T5 tokenizer from a folder that has only SentencePiece's `spiece.model`.

Trains a tiny SentencePiece unigram model in T5's layout (`<pad>` 0, `</s>` 1, `<unk>` 2, no `<s>`) on the
built-in corpus below, with a small custom normalisation rule table so that the model carries a
`precompiled_charsmap` (Google's `nmt_nfkc` table alone is ~240 KB), then tokenizes the test strings with
transformers' fast T5 tokenizer loaded the way diffusers loads `tokenizer_2/` / `tokenizer_3/`
(`T5TokenizerFast.from_pretrained(folder)`, the folder holding only `spiece.model`).

Writes, into the folder given (default: this script's folder):
  spiece.model    the SentencePiece model
  expected.json   {"versions", "vocab_size", "cases": [{"text", "input_ids", "sentencepiece_ids"}]}
                  input_ids: the fast tokenizer's ids (`</s>` appended, no padding) -- what Stipple must give.
                  sentencepiece_ids: SentencePieceProcessor.encode(text) + [eos], for information only
                  (SentencePiece itself knows no `<extra_id_N>` and strips differently).
  tokenizer.json  the fast tokenizer saved by transformers, to compare the two load paths.

Deterministic: one training thread, no sentence sampling or shuffling; the script checks that two trainings
give the same bytes.  Usage: python make_t5_spiece.py [OUT_DIR]
"""

import io
import json
import os
import sys
import tempfile

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2
import transformers

CORPUS = """\
A photograph of a red cat sitting on a blue mat, soft light, high detail.
A watercolor painting of a small house by the river at sunset.
An astronaut riding a horse on the moon, digital art, 4k, trending.
Two dogs playing in the snow; one is brown and the other is white.
A bowl of fresh fruit: apples, oranges, bananas and grapes on a wooden table.
Portrait of an old fisherman with a grey beard, oil on canvas, 1887.
A futuristic city skyline at night with neon lights and flying cars.
The café on the corner serves crème brûlée, croissants and café au lait.
A naïve drawing of a façade in the old town, with a résumé pinned to the door.
Señor García drinks piña colada at the fiesta in São Paulo.
Über den Wolken: a Zeppelin flies over the Bodensee, 1936.
Crêpes, pâté, and déjà vu in a tiny bistro near the Seine.
Mountains covered in snow, a lake in the foreground, 35mm film photo.
A robot reading a book in a library, warm light, shallow depth of field.
3 red circles, 12 blue squares and 7 green triangles on a white background.
The temperature is 21.5 degrees; the time is 10:45; the price is $19.99.
Model numbers: X-100, T5-XXL, SD3.5 and FLUX.1 are image generators.
A close-up of a butterfly on a sunflower, macro photography, f/2.8.
"Hello," she said, "is this the way to the station?" -- yes, it is!
Question? Answer! Semicolons; colons: commas, periods. Parentheses (like this) [and brackets].
Two  spaces  between  words  and   three   spaces   here.
A cozy cabin in the woods, smoke from the chimney, winter evening, stars above.
An illustration of a dragon made of clouds, fantasy art, highly detailed.
A minimalist logo of a fox, flat design, orange and black, vector.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.
Pack my box with five dozen liquor jugs; how vexingly quick daft zebras jump!
A street market in Marrakech with spices, lanterns and colourful fabrics.
A knight in shining armour standing guard at the castle gate at dawn.
A bicycle leaning against a yellow wall in a narrow Italian street.
An underwater scene with coral reefs, tropical fish and a sea turtle.
A steaming cup of coffee next to a laptop and a notebook, morning light.
A black and white photo of a jazz band playing in a smoky club, 1950s.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 42.
Sunflowers in a field, Van Gogh style, thick brush strokes, vivid colours.
A lighthouse on a rocky cliff during a storm, dramatic waves, long exposure.
A child flying a kite on the beach, summer afternoon, film grain.
"""

# Custom normalisation rules (SentencePiece's TSV: source code points TAB target code points, in hex).
# Small enough to keep the model file small, and enough to make the charsmap matter: ligatures, circled
# digits, full-width forms, a composition (e + combining acute -> é), no-break space and tab -> space.
RULES = (
    [("FB01", "66 69"), ("FB02", "66 6C"), ("00A0", "20"), ("0009", "20"), ("0065 0301", "E9"), ("0061 0300", "E0")]
    + [(f"{0x2460 + i:04X}", f"{0x31 + i:02X}") for i in range(9)]  # ①..⑨ -> 1..9
    + [(f"{0xFF21 + i:04X}", f"{0x41 + i:02X}") for i in range(26)]  # Ａ..Ｚ -> A..Z
    + [(f"{0xFF41 + i:04X}", f"{0x61 + i:02X}") for i in range(26)]  # ａ..ｚ -> a..z
    + [(f"{0xFF10 + i:04X}", f"{0x30 + i:02X}") for i in range(10)]  # ０..９ -> 0..9
)

TEXTS = [
    "",
    "a cat on the mat",
    "A photograph of a red cat sitting on a blue mat",
    "MiXeD CaSe WoRdS and ALLCAPS",
    "double  spaces   and    more",
    "  leading and trailing spaces  ",
    " ",
    "Café ﬁ ①",
    "Cafe\u0301 with a combining accent, a\u0300 la carte",
    "naïve façade résumé crème brûlée",
    "unknown characters: ✓ 漢字 🎨 Ω",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<extra_id_0>",
    "fill <extra_id_0> in and <extra_id_17>here<extra_id_99>",
    "</s> inside and <pad> and <unk> too",
    "digits 12345 and 3.14159, price $19.99",
    "punctuation!?,.;: (brackets) [more] \"quotes\"",
    "full-width ＡＢＣ ｘｙｚ １２３",
    "no\u00a0break space and a\ttab",
    "line\nbreak and\n\ntwo",
    "An astronaut riding a horse on the moon, digital art, 4k, trending, highly detailed, 35mm film photo",
]


def train(rule_tsv: str) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=400,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_tsv=rule_tsv,
        # T5's special pieces: <pad> 0, </s> 1, <unk> 2 and no <s>.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    # The trainer records the rule file's (temporary) path; drop it so the bytes do not depend on it.
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    proto.normalizer_spec.ClearField("normalization_rule_tsv")
    return proto.SerializeToString()


def main() -> None:
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rule_tsv = os.path.join(tmp, "rules.tsv")
        with open(rule_tsv, "w", encoding="utf-8") as f:
            f.writelines(f"{src}\t{dst}\n" for src, dst in RULES)
        model = train(rule_tsv)
        assert train(rule_tsv) == model, "SentencePiece training is not deterministic"

        folder = os.path.join(tmp, "tokenizer")
        os.makedirs(folder)
        with open(os.path.join(folder, "spiece.model"), "wb") as f:
            f.write(model)
        # As diffusers loads `tokenizer_2/`: from_pretrained on the folder (constructing the class with
        # `vocab_file=` alone does not read the file in transformers 5).
        fast = transformers.T5TokenizerFast.from_pretrained(folder)
        processor = spm.SentencePieceProcessor(model_proto=model)

        cases = []
        for text in TEXTS:
            ids = fast(text)["input_ids"]
            spm_ids = processor.encode(text) + [processor.eos_id()]
            if ids != spm_ids:
                print(f"note: sentencepiece differs on {text!r}: {ids} vs {spm_ids}")
            cases.append({"text": text, "input_ids": ids, "sentencepiece_ids": spm_ids})

        with open(os.path.join(out, "spiece.model"), "wb") as f:
            f.write(model)
        expected = {
            "versions": {
                "sentencepiece": spm.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
            "pieces": processor.get_piece_size(),
            "vocab_size": len(fast),
            "cases": cases,
        }
        with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, indent=1)
            f.write("\n")
        fast.backend_tokenizer.save(os.path.join(out, "tokenizer.json"))
    print(f"{len(model)} bytes, {processor.get_piece_size()} pieces, tokenizer size {len(fast)}; wrote {out}")


if __name__ == "__main__":
    main()
