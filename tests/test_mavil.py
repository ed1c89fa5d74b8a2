"""MAViL: the intra-modal term equals a direct computation on a second masked view; stage 2 predicts a frozen
teacher's fused tokens at masked positions; both stages train through avmae-train, and a stage-2 export loads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avmae.cli.eval import main as eval_main
from avmae.export.load import load_model
from avmae.models.avmae import AVMAE
from avmae.models.config import MAViLConfig
from avmae.models.losses import info_nce, masked_mse
from avmae.models.masking import gather_tokens, visible_indices
from avmae.models.mavil import MAViL
from tests.helpers import metrics, run_config, torchrun
from tests.tiny_models import inputs, tiny


def stage1(intra=0.5) -> MAViL:
    torch.manual_seed(0)
    return MAViL(tiny(contrastive=0.01), MAViLConfig(intra_weight=intra, intra_temperature=0.2))


def test_intra_modal_term_contrasts_two_masked_views_of_each_modality():
    model = stage1()
    audio, video = inputs(batch=4)
    out = model(audio, video, generator=torch.Generator().manual_seed(5))
    # By hand: the same first view (the generator's first draw), then a second mask from the generator's next draw.
    g = torch.Generator().manual_seed(5)
    tokens, grids = {}, {}
    tokens["audio"], grids["audio"] = model.tokenizer.audio(audio)
    tokens["video"], grids["video"] = model.tokenizer.video(video)
    views = []
    for _ in range(2):
        masks = model.make_masks(4, grids, g)
        kept = {m: gather_tokens(tokens[m], visible_indices(masks[m])) for m in tokens}
        views.append({m: x.mean(dim=1) for m, x in model.encoder(kept, unimodal=True)[1].items()})
    expected = (info_nce(views[0]["audio"], views[1]["audio"], 0.2, True)
                + info_nce(views[0]["video"], views[1]["video"], 0.2, True)) / 2
    assert torch.allclose(out["loss_intra"], expected, atol=1e-6)
    base = out["loss_audio"] * 0.5 + out["loss_video"] * 0.5 + 0.01 * out["loss_contrastive"]
    assert torch.allclose(out["loss"], base + 0.5 * expected, atol=1e-6)


def test_without_intra_weight_stage_one_is_av_mae():
    audio, video = inputs()
    plain = AVMAE(tiny(contrastive=0.01))
    mavil = MAViL(tiny(contrastive=0.01), MAViLConfig())
    mavil.load_state_dict(plain.state_dict())
    a = plain(audio, video, generator=torch.Generator().manual_seed(1))
    b = mavil(audio, video, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["loss"], b["loss"]) and "loss_intra" not in b


def test_stage_two_predicts_the_teachers_fused_tokens_at_masked_positions():
    teacher = stage1()
    student = MAViL(tiny(contrastive=0.0), MAViLConfig(teacher="stage1"))
    student.attach_teacher(teacher)
    assert not any(name.startswith("_teacher") for name in student.state_dict())  # not trained, not saved
    assert all(p.requires_grad is False for p in teacher.parameters())
    assert student.decoder.head["audio"].out_features == 32  # encoder width, not a patch
    audio, video = inputs()
    out = student(audio, video, generator=torch.Generator().manual_seed(2))
    tokens = {"audio": teacher.tokenizer.audio(audio)[0], "video": teacher.tokenizer.video(video)[0]}
    fused, _ = teacher.encoder(tokens)  # unmasked, joint layers: aligned and contextualised
    for m in ("audio", "video"):
        target = torch.nn.functional.layer_norm(fused[m], (32,))
        expected = masked_mse(out[f"pred_{m}"], target, out[f"mask_{m}"], norm_pix=False)
        assert torch.allclose(out[f"loss_{m}"], expected, atol=1e-6)
    out["loss"].backward()
    assert student.encoder.audio.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_a_teacher_of_another_width_is_refused():
    student = MAViL(tiny(), MAViLConfig(teacher="x"))
    other = tiny()
    other.encoder.width = 64
    other.encoder.mlp = 128
    with pytest.raises(ValueError, match="width 64 vs 32"):
        student.attach_teacher(AVMAE(other))
    with pytest.raises(RuntimeError, match="needs its teacher"):
        student(*inputs())


@pytest.mark.slow
def test_both_stages_train_with_avmae_train_and_the_student_exports(shards, tmp_path):  # noqa: F811
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    first.mkdir()
    second.mkdir()
    torchrun(run_config(first, shards, mavil={"intra_weight": 0.5}), processes=2)
    parts = [m for m in metrics(first / "run") if "loss_intra" in m]
    assert len(parts) == 8 and all(math.isfinite(m["loss_intra"]) for m in parts)
    result = torchrun(run_config(second, shards, mavil={"teacher": str(first / "run")},
                                 optim={"steps": 12, "lr": 2e-3, "warmup_steps": 2}), processes=2)
    assert result["finished"]
    assert json.loads((second / "run" / "init_report.json").read_text())["teacher"].endswith("model.safetensors")
    losses = [m["loss"] for m in metrics(second / "run") if "loss" in m]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the student learns the teacher's features
    student = load_model(second / "run").model  # loads without its teacher
    assert isinstance(student, MAViL) and student.stage == 2
    # Its encoder serves retrieval like any pretraining export; reconstruction is refused with the reason.
    report = tmp_path / "retrieval"
    assert eval_main(["--ckpt", str(second / "run"), "--data", str(shards), "--split", "train", "--task", "retrieval",
                      "--out", str(report), "--workers", "0", "--json", "--batch-size", "4"]) == 0
    assert "R@1" in json.dumps(json.loads((report / "report.json").read_text())["metrics"])
    assert eval_main(["reconstruct", "--ckpt", str(second / "run"), "--data", str(shards), "--split", "val",
                      "--out", str(tmp_path / "figures")]) == 2
