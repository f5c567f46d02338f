"""SAR oil spills from the command line: procedural data, SAR-JointNet (three stages), pair
generation, SAROSS-Net (with DAKD from generated pairs) and its evaluation.

    python -m training sar-scenes --output runs/data/sar --count 200 --size 256
    python -m training sar-jointnet --config CFG --stage 1            (then --stage 2 / 3 with --init)
    python -m training sar-synthesize --model DIR --output runs/data/sar_generated --count 256
    python -m training saross --config CFG [--synthetic runs/data/sar_generated]
    python -m training sar-evaluate --model DIR --data FOLDER [--split test]

Datasets: our folder format, the OSD (Krestenitis) and SOS layouts, and the side-by-side sample
layout are all read by core.data.sar.open_sar_dataset.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import ModelCard, Normalization, load_card, load_into
from core.data.folder import IGNORE_INDEX
from core.data.generated import GeneratedPairs, save_pair_grid
from core.data.sar import SAR_BANDS, MosaicDataset, SarCropDataset, _crop, _tensors, open_sar_dataset
from core.data.sar_scaling import SarScaling, SceneScaler
from core.metrics.segmentation import confusion_matrix, scores
from core.oilspill import jointnet, saross
from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs
from core.oilspill.losses import saross_loss
from core.progress import Progress, TqdmProgress
from training.config import DiffusionLossConfig, RunConfig, add_init_from_argument, add_run_arguments, config_from_args
from training.monitor import TrainingMonitor, monitored
from training.segment import evaluate, split_pairs
from training.trainer import Trainer, TrainingError, seed_everything
from training.transfer import start_from

log = logging.getLogger(__name__)

# Inputs are scaled by extra["sar_scaling"] (core.data.sar_scaling); the card's normalisation is the identity after it.
IDENTITY = Normalization(offset=[0.0], scale=[1.0])


@dataclass(kw_only=True)
class SarJointNetTrainConfig(DiffusionLossConfig, RunConfig):
    stage: int = 1                 # 1: SAR-Net alone; 2: Label-Net + couplings (SAR-Net frozen); 3: everything
    init: str = ""                 # stages 2 and 3: the previous stage's model directory
    preset: str = "small"
    batch_size: int = 16
    samples_per_image: int = 8
    steps: int = 5000
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    val_every: int = 1000          # save a grid of generated pairs (DDIM-50) this often; 0: never
    checkpoint_every: int = 500
    clip_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    to_db: bool = True


@dataclass(kw_only=True)
class SarossTrainConfig(RunConfig):
    preset: str = "small"
    encoder: str = ""              # any smp / timm ("tu-...") encoder; empty: the preset's
    skip_block: str = "caft"       # caft | conv | none (ablations)
    patch_size: int = 256          # training crops; generated tiles are mosaicked to this size
    tile_size: int = 0             # inference tiles stored in the card; 0: patch_size
    samples_per_image: int = 4
    val_fraction: float = 0.2
    synthetic: str = ""            # folder of generated pairs with soft/ (sar-synthesize): DAKD
    synthetic_ratio: float = 1.0   # synthetic mosaics per real crop in every batch
    temperature: float = 2.0       # KD temperature T (the paper does not give it)
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.1])   # CE, soft Dice, KD
    clip_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    to_db: bool = True
    steps: int = 2000
    lr: float = 5e-5
    init_from: str = ""            # a SAROSS-Net model folder to fine-tune (architecture and weights)
    eval_data: str = ""            # held-out dataset (same classes); empty: a val_fraction split of `data`
    scene_stretch: list[float] = field(default_factory=list)   # [low, high]: one stretch for every image (see below)
    scene_kind: str = "auto"       # input kind of scene_stretch's values (core.data.sar_scaling.INPUT_KINDS)
    saturation: float = 0.0        # share of real crops shown as saturated 8-bit products (SarCropDataset); paper: 0


class SceneStretchCrops(SarCropDataset):
    """SarCropDataset with one fixed stretch for every image: the patches of one scene, cut for fine-tuning, are
    stretched as the whole scene is in QGIS (fit_scene_scaler), not each by its own percentiles."""

    def __init__(self, dataset, scaler: SceneScaler, crop: int, samples_per_image: int = 4, train: bool = True):
        super().__init__(dataset, scaler.scaling, crop, samples_per_image, train)
        self.scaler = scaler

    def __getitem__(self, index: int):
        raw, valid, labels, _ = self.dataset.read(index % len(self.dataset))
        x, soft = self.scaler(raw, valid), np.zeros((len(self.dataset.classes), *labels.shape), np.float32)
        top = left = 0
        if self.train:
            top = int(torch.randint(max(labels.shape[0] - self.crop, 0) + 1, ()))
            left = int(torch.randint(max(labels.shape[1] - self.crop, 0) + 1, ()))
        x, labels, soft = _crop(x, labels, soft, self.crop, top, left)
        if self.train:
            k = int(torch.randint(4, ()))
            x, labels, soft = np.rot90(x, k), np.rot90(labels, k), np.rot90(soft, k, (1, 2))
            if int(torch.randint(2, ())):
                x, labels, soft = x[:, ::-1], labels[:, ::-1], soft[:, :, ::-1]
        return _tensors(x, labels, soft)


def _scaling(cfg) -> SarScaling:
    return SarScaling(to_db=cfg.to_db, clip_percentiles=tuple(cfg.clip_percentiles))


def train_jointnet(cfg: SarJointNetTrainConfig) -> Path:
    if cfg.stage not in (1, 2, 3):
        raise TrainingError(f"--stage must be 1, 2 or 3, not {cfg.stage}.")
    data = open_sar_dataset(cfg.data)
    scaling = _scaling(cfg)
    seed_everything(cfg.seed)
    if cfg.stage == 1:
        size = jointnet.PRESETS[cfg.preset]["sample_size"] if cfg.preset in jointnet.PRESETS else 0
        dataset = SarCropDataset(data, scaling, size, cfg.samples_per_image, train=True)
        balance = jointnet.balancing_factor(
            ((x, y) for x, y, _ in torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size)), len(data.classes))
        architecture = jointnet.architecture_for(cfg.preset, len(data.classes), balance)
        model = jointnet.build_jointnet(architecture)
        history: list[dict] = []
    else:
        if not cfg.init:
            raise TrainingError(f"Stage {cfg.stage} starts from the previous stage's model: give --init DIR.")
        previous = load_card(cfg.init, task=jointnet.TASK)
        if previous.extra.get("stage", 0) != cfg.stage - 1 and not cfg.resume:
            raise TrainingError(f"--init {cfg.init} is a stage-{previous.extra.get('stage')} model; "
                                f"stage {cfg.stage} starts from stage {cfg.stage - 1}.")
        if [c.value for c in previous.classes] != [c.value for c in data.classes]:
            raise TrainingError(f"--init {cfg.init} has classes {[c.name for c in previous.classes]}; "
                                f"the data has {[c.name for c in data.classes]}.")
        architecture = previous.architecture
        model = load_into(jointnet.build_jointnet(architecture), cfg.init)
        if cfg.stage == 2:
            jointnet.init_label_net_from_sar(model)
        history = previous.extra.get("stages", [])
        dataset = SarCropDataset(data, scaling, architecture["sample_size"], cfg.samples_per_image, train=True)
    parameters = jointnet.start_stage(model, cfg.stage)
    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings(), parameters=parameters)
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)
    scheduler = jointnet.training_scheduler()
    criterion, loss_entry = cfg.loss_criterion()
    balance = architecture["balance"]

    def loss_fn(net, batch):
        x, labels, _ = batch
        loss, _parts = jointnet.joint_loss(net, scheduler, x, labels, balance, cfg.stage, criterion=criterion)
        return loss

    def sample_grid(net):
        pairs = jointnet.sample_pairs(net, count=4, steps=50, seed=cfg.seed)
        save_pair_grid(GeneratedPairs((pairs.images + 1) / 2, pairs.labels, None), [c.color for c in data.classes],
                       run / f"samples_{trainer.step:06d}.png")
        return {}

    trainer.fit(loader, loss_fn, sample_grid)
    history = history + [{"stage": cfg.stage, "steps": trainer.step, "lr": cfg.lr}]
    return trainer.export(ModelCard(
        task=jointnet.TASK, name=cfg.name or run.name, architecture=architecture, bands=list(SAR_BANDS),
        normalization=IDENTITY, classes=data.classes, tile_size=architecture["sample_size"],
        training_data=f"{Path(cfg.data).resolve().name} ({data.layout}): {len(data.samples)} images",
        extra={**loss_entry, "stage": cfg.stage, "stages": history, "sar_scaling": scaling.as_dict(),
               "sampling_steps": jointnet.DEFAULT_SAMPLING_STEPS}))


def train_saross(cfg: SarossTrainConfig, monitor: TrainingMonitor | None = None) -> Path:
    """`monitor`: per-step reports, cancel and time budget for interactive callers (training.monitor)."""
    data = open_sar_dataset(cfg.data)
    scaling = _scaling(cfg)
    if cfg.eval_data:
        train_samples, val_samples = data.samples, open_sar_dataset(cfg.eval_data).samples
    else:
        train_samples, val_samples = split_pairs(data.samples, cfg.val_fraction, cfg.seed)
    train_data = dataclasses.replace(data, samples=train_samples)
    base = load_card(cfg.init_from, task=saross.TASK) if cfg.init_from else None
    if base is not None:
        architecture = {**base.architecture, "classes": len(data.classes)}
    else:
        architecture = saross.architecture_for(cfg.preset, len(data.classes), cfg.encoder or None, cfg.skip_block)
    seed_everything(cfg.seed)
    model = saross.build_saross(architecture)
    if base is not None:
        init_notes = start_from(model, cfg.init_from, base, data.classes, saross.HEAD_KEYS, 1)
        for note in init_notes:
            (monitor.progress.info if monitor else print)(note)
    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings())
    if cfg.scene_stretch:
        if cfg.saturation:
            raise TrainingError("saturation simulates 8-bit products stretched image by image; it cannot be "
                                "combined with scene_stretch (one stretch for every image of a scene).")
        scaler = SceneScaler(cfg.scene_kind, *map(float, cfg.scene_stretch), scaling)

        def crops(dataset, samples_per_image=1, train=True):
            return SceneStretchCrops(dataset, scaler, cfg.patch_size, samples_per_image, train)
    else:
        def crops(dataset, samples_per_image=1, train=True):
            return SarCropDataset(dataset, scaling, cfg.patch_size, samples_per_image, train, cfg.saturation)
    real = crops(train_data, cfg.samples_per_image)
    synthetic_note = ""
    if cfg.synthetic and cfg.synthetic_ratio > 0:
        generated = open_sar_dataset(cfg.synthetic)
        if [c.value for c in generated.classes] != [c.value for c in data.classes]:
            raise TrainingError(f"Generated pairs in {cfg.synthetic} have classes "
                                f"{[c.name for c in generated.classes]}; the real data has "
                                f"{[c.name for c in data.classes]}.")
        tile = generated.read(0)[0].shape[-1]
        if cfg.patch_size % tile:
            raise TrainingError(f"patch_size {cfg.patch_size} must be a multiple of the generated tile size {tile} "
                                "(mosaics of generated tiles are the synthetic training inputs).")
        mosaics = MosaicDataset(generated, scaling, tiles=cfg.patch_size // tile, length=len(real))
        loader = trainer.balanced_loader(real, mosaics, cfg.batch_size, cfg.synthetic_ratio, cfg.num_workers)
        synthetic_note = (f" + {len(generated.samples)} generated pairs from {Path(cfg.synthetic).resolve().name} "
                          f"(DAKD, R={cfg.synthetic_ratio:g}, T={cfg.temperature:g})")
    else:
        loader = trainer.loader(real, cfg.batch_size, cfg.num_workers)
    val_loader = None
    if val_samples:
        val_set = crops(dataclasses.replace(data, samples=val_samples), train=False)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size)
    names = [c.name for c in data.classes]

    def loss_fn(net, batch):
        x, labels, soft = batch
        return saross_loss(net(x), labels, soft, cfg.temperature, tuple(cfg.loss_weights))

    def validate(net):
        return evaluate(net, val_loader, len(names), names, trainer.device)

    loss_fn, validate = monitored(trainer, loss_fn, validate if val_loader is not None else None, monitor)
    metrics = trainer.fit(loader, loss_fn, validate)
    return trainer.export(ModelCard(
        task=saross.TASK, name=cfg.name or run.name, architecture=architecture, bands=list(SAR_BANDS),
        normalization=IDENTITY, classes=data.classes, tile_size=cfg.tile_size or cfg.patch_size,
        training_data=f"{Path(cfg.data).resolve().name} ({data.layout}): {len(train_samples)} train / "
                      f"{len(val_samples)} val images" + synthetic_note,
        metrics={k: round(v, 4) for k, v in metrics.items() if np.isfinite(v)},
        extra={"steps": trainer.step, "patch_size": cfg.patch_size, "sar_scaling": scaling.as_dict(),
               "temperature": cfg.temperature, "loss_weights": list(cfg.loss_weights), "saturation": cfg.saturation,
               **({"base_model": base.name, "init_notes": init_notes} if base else {})}))


def evaluate_saross(model_dir: str, data_root: str, split: str = "test", device: str = "auto") -> dict[str, float]:
    """Scores of a SAROSS-Net model on every labelled whole image of a dataset (padded to a multiple of 32).

    IoU and F1 for every class of the model, by the card's names: the dataset's labels are matched to
    them by name, so a 5-class model on binary sea/oil data that calls sea "land" loses sea IoU and
    shows the false land; `predicted/<class>` is the share of the scored pixels given each class. Pixels of
    a dataset class the model lacks are left out, with a warning.
    """
    names, _, per_image = _confusions(model_dir, data_root, split, device)
    cm = sum((confusion for _, confusion in per_image), torch.zeros(len(names), len(names), dtype=torch.long))
    predicted = cm.sum(dim=0).double() / max(int(cm.sum()), 1)   # columns: what the model called the pixels
    return {**scores(cm, names), **{f"predicted/{name}": float(share) for name, share in zip(names, predicted)}}


def _confusions(model_dir: str, data_root: str, split: str, device: str):
    """(the model's class names, the number of labelled images, an iterator of (sample, confusion matrix) over them)."""
    from core.device import resolve_device
    from core.oilspill.pipeline import load_saross
    from core.data.sar_scaling import SceneScaler
    model, card = load_saross(model_dir)
    data = open_sar_dataset(data_root, split=split, skip_unlabelled=True)
    names = [c.name for c in card.classes]
    data_names = [c.name for c in data.classes]
    if not set(names) & set(data_names):
        raise TrainingError(f"The dataset's classes ({', '.join(data_names)}) share no name with the model's "
                            f"({', '.join(names)}): nothing to score.")
    unknown = [name for name in data_names if name not in names]
    if unknown:
        log.warning("Pixels labelled %s are not scored: model %s has no such class (its classes: %s).",
                    ", ".join(unknown), model_dir, ", ".join(names))
    to_model = torch.tensor([names.index(name) if name in names else IGNORE_INDEX for name in data_names])
    scaling = SarScaling.from_dict(card.extra.get("sar_scaling"))
    dev = resolve_device(device)
    model = model.to(dev).eval()

    def per_image():
        with torch.inference_mode():
            for i, sample in enumerate(data.samples):
                raw, valid, labels, dtype = data.read(i)
                x = SceneScaler.fit(raw, valid, dtype, scaling)(raw, valid)
                h, w = x.shape
                padded = np.pad(x, ((0, -h % 32), (0, -w % 32)), mode="reflect")
                logits = model(torch.from_numpy(padded)[None, None].to(dev))[0, :, :h, :w].cpu()
                truth = torch.from_numpy(labels)
                labelled = truth != IGNORE_INDEX
                truth[labelled] = to_model[truth[labelled]]
                yield sample, confusion_matrix(logits.argmax(0), truth, len(names), IGNORE_INDEX)
    return names, len(data.samples), per_image()


def filter_consistent_pairs(model_dir: str, pairs_dir: str, output: str, keep: float = 0.5,
                            device: str = "auto", progress: Progress | None = None) -> dict:
    """Keep the generated pairs whose labels a model trained on real data agrees with best (per-pair mIoU),
    the top `keep` share, in a new pairs folder (copies: images, masks, soft labels, classes.json).

    Generated pairs whose labels do not match their images teach a downstream model the wrong thing; the
    label-consistency score of issue 20 measures that per set, this acts on it per pair. Every pair is scored
    before anything is written, so a cancelled run leaves no output. Returns the scores."""
    progress = progress or Progress()
    if not 0 < keep <= 1:
        raise TrainingError(f"keep must be a share in (0, 1], not {keep}.")
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"Output folder {output} is not empty.")
    names, count, per_image = _confusions(model_dir, pairs_dir, "train", device)
    scored = []
    for done, (sample, cm) in enumerate(per_image, start=1):
        scored.append((scores(cm, names)["mIoU"], sample))
        progress.step(done, count)
    scored.sort(key=lambda pair: -np.nan_to_num(pair[0]))
    kept = scored[:max(1, round(keep * len(scored)))]
    source = Path(pairs_dir)
    for folder in ("images", "masks", "soft"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "classes.json", out / "classes.json")
    for _, sample in kept:
        for path, folder in ((sample.image, "images"), (sample.mask, "masks"), (sample.soft, "soft")):
            if path is not None:
                shutil.copy2(path, out / folder / Path(path).name)
    values = [s for s, _ in scored]
    return {"pairs": len(scored), "kept": len(kept), "miou_all": float(np.nanmean(values)),
            "miou_kept": float(np.nanmean([s for s, _ in kept])), "threshold": float(kept[-1][0])}


# --- command line -------------------------------------------------------------------------------------

def add_scenes_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="new dataset folder (images/, masks/, classes.json)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("linear", "db", "amplitude"), default="linear",
                        help="how the SAR values are stored: linear sigma0, dB, or 8-bit amplitude")


def main_scenes(args) -> None:
    from core.data.sar import write_sar_dataset
    print(f"dataset written to {write_sar_dataset(args.output, args.count, args.size, args.seed, args.kind)}")


def add_jointnet_arguments(parser) -> None:
    add_run_arguments(parser, "SarJointNetTrainConfig")
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), help="override: training stage")
    parser.add_argument("--init", help="override: the previous stage's model directory")
    parser.add_argument("--lr", type=float, help="override: learning rate (paper: 1e-4 stages 1-2, 1e-5 stage 3)")


def main_jointnet(args) -> None:
    print(f"model written to {train_jointnet(config_from_args(SarJointNetTrainConfig, args))}")


def add_saross_arguments(parser) -> None:
    add_run_arguments(parser, "SarossTrainConfig")
    parser.add_argument("--synthetic", help="override: folder of generated pairs with soft labels (DAKD)")
    add_init_from_argument(parser, "SAROSS-Net")


def main_saross(args) -> None:
    print(f"model written to {train_saross(config_from_args(SarossTrainConfig, args))}")


def add_synthesize_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="new or empty folder for the pairs")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--model", default="", help="SAR-JointNet model directory (default: the starter model)")
    parser.add_argument("--steps", type=int, default=jointnet.DEFAULT_SAMPLING_STEPS, help="DDIM steps (paper: 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_synthesize(args) -> None:
    progress = TqdmProgress("sar-synthesize")
    result = synthesize_sar_pairs(SarSynthesisParams(
        output_dir=args.output, count=args.count, model_dir=args.model, steps=args.steps, seed=args.seed,
        batch_size=args.batch_size, device=args.device), progress)
    progress.close()
    print(f"{len(result.pairs)} pairs written to {result.output_dir} (index: {result.index_path})")


def add_filter_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="SAROSS-Net model trained on real data only (the judge)")
    parser.add_argument("--pairs", required=True, help="generated pairs folder (sar-synthesize)")
    parser.add_argument("--output", required=True, help="new or empty folder for the kept pairs")
    parser.add_argument("--keep", type=float, default=0.5, help="share of the pairs to keep, best agreement first")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_filter(args) -> None:
    progress = TqdmProgress("sar-filter-pairs", unit="pair")
    try:
        result = filter_consistent_pairs(args.model, args.pairs, args.output, args.keep, args.device, progress)
    finally:
        progress.close()
    print(f"kept {result['kept']} of {result['pairs']} pairs (per-pair mIoU >= {result['threshold']:.3f}; "
          f"mean {result['miou_all']:.3f} over all, {result['miou_kept']:.3f} kept) in {args.output}")


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("--model", default="", help="SAROSS-Net model directory (default: the starter model)")
    parser.add_argument("--data", required=True, help="dataset (folder, OSD, SOS or side-by-side layout)")
    parser.add_argument("--split", default="test", help="split for layouts that have one (train / test)")
    parser.add_argument("--output", help="optional JSON file for the scores")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_evaluate(args) -> None:
    from core.catalog import starter_model_dir
    result = evaluate_saross(args.model or str(starter_model_dir(saross.TASK)), args.data, args.split, args.device)
    for key, value in result.items():
        print(f"{key:>24s}  {value:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
