"""The classifier: a class-prompt head that is open_clip's zero-shot classifier at the logit
scale, fp32 logits under autocast, the class-level image–text term, prompts that read any data
set's class names, and the text encoded cut to the longest prompt."""

from __future__ import annotations

import math
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from harclip.data.layout import CLASS_NAMES
from harclip.model.backbones import create_backbone, create_tokenizer
from harclip.model.classifier import (
    PromptEncoder,
    build_classifier,
    build_model,
    class_text_loss,
    encode_text_cut,
    init_head,
)
from harclip.runtime.errors import StageError
from tests.support.params import train_config
from tests.support.runs import random_batch

FRUIT = ["apple", "banana", "cherry", "date", "elderberry"]


def _aligned(n_classes=15, batch=64, dim=32):
    """Orthonormal class texts, and labels that hold every class several times."""
    class_text = torch.linalg.qr(torch.randn(dim, n_classes))[0].T.contiguous()
    labels = torch.arange(batch) % n_classes
    return class_text, labels


TINY = ("harclip-tiny-clip", "harclip-tiny-siglip")


def test_prompts_read_class_names_as_words_or_the_given_phrase():
    seen = []
    PromptEncoder(lambda texts: seen.extend(texts) or torch.zeros(len(texts), 4, dtype=int),
                  ["using_laptop", "ice_skating"], ["a photo of a person {}."],
                  {"using_laptop": "using a laptop"})
    assert seen == ["a photo of a person using a laptop.", "a photo of a person ice skating."]
    with pytest.raises(StageError, match=r"^train_clip.prompt_names: 'juggling' not among "
                                         r"the 5 classes of the data; remove those entries "
                                         r".*or set prompt_names: \{\}"):
        build_model(train_config(prompt_names={"apple": "an apple", "juggling": "juggling"}),
                    FRUIT, section="train_clip")  # some phrases name classes: the rest typos


def test_phrases_for_another_data_sets_classes_are_set_aside(caplog):
    """The demo's params describe HAR's 15 actions: a data set of its own classes trains on
    them unchanged, its prompts reading the class names."""
    seen = []
    tokenizer = lambda texts: seen.extend(texts) or torch.ones(len(texts), 24, dtype=int)  # noqa: E731
    with caplog.at_level("INFO", logger="harclip"):
        build_model(train_config(head_init="text", prompt_templates=("{}",),
                                 prompt_names={"calling": "a person holding a phone"}), FRUIT,
                    tokenizer)
    assert seen[:len(FRUIT)] == [name.replace("_", " ") for name in FRUIT]
    assert any("describe none of the 5 classes" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["harclip-tiny-clip", "harclip-tiny-siglip",
                                  "ViT-B-32-quickgelu"])
def test_prompts_cut_to_the_longest_encode_as_the_whole_context(name):
    torch.manual_seed(0)
    clip = create_backbone(name, None).eval()
    tokenizer = create_tokenizer(name) if name.startswith("harclip") else \
        open_clip.SimpleTokenizer()
    tokens = tokenizer(["a photo of a person calling.",
                        "a person lying on a bed with closed eyes, under a blanket"])
    lengths = []
    handle = (getattr(clip, "text", clip)).transformer.register_forward_pre_hook(
        lambda _m, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        cut = encode_text_cut(clip, tokens, int((tokens != 0).sum(dim=1).max()))
        lengths_cut = lengths[:]
        full = clip.encode_text(tokens, normalize=True)
    handle.remove()
    assert lengths_cut == [int((tokens != 0).sum(dim=1).max())] < [tokens.shape[1]]
    assert torch.allclose(cut, full, atol=1e-5)


def test_a_tower_without_a_causal_mask_gets_the_whole_context():
    """SigLIP's webli text tower attends both ways and pools the last position: cutting
    would change it, so it is encoded whole."""
    torch.manual_seed(0)
    clip = create_backbone("ViT-B-16-SigLIP", None).eval()
    tokens = torch.zeros(2, clip.text.num_pos, dtype=torch.long)
    tokens[:, :5] = torch.randint(1, 1000, (2, 5))
    with torch.no_grad():
        assert torch.allclose(encode_text_cut(clip, tokens, 5),
                              clip.encode_text(tokens, normalize=True))


def test_the_prompt_encoder_reads_nothing_back_from_the_device(monkeypatch):
    """The image–text term runs every micro-batch: its prompts' length is known on the host,
    not read from the device's tokens each time (a GPU sync)."""
    from harclip.data.layout import CLASS_NAMES
    from harclip.model.classifier import PromptEncoder

    prompts = PromptEncoder(create_tokenizer("harclip-tiny-clip"), CLASS_NAMES, ["a {}"])
    clip = create_backbone("harclip-tiny-clip", None)

    def host_read(*_args):
        raise AssertionError("a value read back from the device")

    for name in ("item", "__int__", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    assert prompts(clip).shape == (len(CLASS_NAMES), 128)


def test_class_logits_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model, _ = build_model(train_config())
    images = torch.randn(4, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.image_features(images)
        logits = model.head(features)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = F.linear(features.float(), model.head.weight, model.head.bias)
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("siglip", [False, True])
def test_image_text_term_has_its_minimum_at_the_own_class_and_pulls_towards_it(siglip):
    torch.manual_seed(0)
    class_text, labels = _aligned()
    clip = types.SimpleNamespace(logit_scale=torch.tensor(math.log(100.0)),
                                 logit_bias=torch.tensor(-10.0) if siglip else None)
    aligned = class_text[labels]
    minimal = class_text_loss(aligned, class_text, labels, clip)
    assert minimal < 1e-3  # 64 images, each class about 4 times: no duplicate is a negative
    if siglip:  # open_clip's per-image SigLipLoss would count each repeat as a negative
        per_image = SigLipLoss()(aligned, aligned, clip.logit_scale.exp(), clip.logit_bias)
        assert per_image > 100
    other = class_text[(labels + 1) % 15]  # features mistaken for another class:
    features = F.normalize(other + 0.1 * aligned, dim=-1).requires_grad_()
    loss = class_text_loss(features, class_text, labels, clip)
    assert loss > minimal
    loss.backward()
    step = -features.grad
    assert ((step * aligned).sum(1) > 0).all()  # towards the own class text
    assert ((step * other).sum(1) < 0).all()  # away from the other one


@pytest.mark.parametrize("name", TINY)
def test_class_prompt_head_is_open_clips_zero_shot_classifier_times_the_scale(name):
    torch.manual_seed(0)
    templates = ("a photo of a person {}.", "someone {}.")
    model, _ = build_model(train_config(model=name, head_init="text", prompt_templates=templates,
                                        prompt_names={}))
    reference = open_clip.build_zero_shot_classifier(
        model.clip, create_tokenizer(name),
        [c.replace("_", " ") for c in CLASS_NAMES], templates)
    scale = model.clip.logit_scale.exp()
    assert torch.allclose(model.head.weight, reference.T * scale, atol=1e-5)
    bias = model.clip.logit_bias if name.endswith("siglip") else 0.0
    assert torch.allclose(model.head.bias, torch.full((15,), float(bias)))
    # so the head's logits are the model's own zero-shot logits
    images, _ = random_batch(n=2)
    with torch.no_grad():
        features = model.clip.encode_image(images, normalize=True)
        expected = scale * features @ reference + bias
        assert torch.allclose(model(images), expected, atol=1e-4)


def test_random_head_has_unit_rows_at_the_logit_scale():
    model = build_classifier("harclip-tiny-clip", None, 15)
    init_head(model, "random")
    norms = model.head.weight.norm(dim=1)
    assert torch.allclose(norms, model.clip.logit_scale.exp().expand(15), rtol=1e-5)
