"""Data commands: ``synthetic`` (a synthetic world), ``pack`` (Arrow IPC) and ``embed``
(photos → Parquet of embeddings)."""

from __future__ import annotations

import argparse
from pathlib import Path

from globeflow.cli.common import CLIError, add_overwrite_arg, check_folder_out, positive_int, stderr

__all__ = ["CHECKS", "COMMANDS", "PARSERS"]


def add_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthetic", help="write a synthetic world (known true density) as train/test Parquet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--types", type=positive_int, default=4, help="number of scene types (default 4)")
    p.add_argument("--dim", type=positive_int, default=32, help="embedding dimension (default 32)")
    p.add_argument(
        "--sigma", type=float, default=0.35, help="embedding noise (ambiguity of the scene type; default 0.35)"
    )
    p.add_argument("--train", type=positive_int, default=20000, help="training rows (default 20000)")
    p.add_argument("--test", type=positive_int, default=2000, help="test rows (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of its rows (default 0)")
    p.add_argument("--components", type=positive_int, default=3, help="most vMF components per type (default 3)")
    p.add_argument("--kappa-min", type=float, default=20.0, help="smallest vMF κ (default 20, ~1400 km)")
    p.add_argument("--kappa-max", type=float, default=2000.0, help="largest vMF κ (default 2000, ~140 km; 2e4 ~45 km)")
    p.add_argument(
        "--families",
        type=positive_int,
        default=None,
        help="group the types into this many families of similar embeddings and unrelated places (default: none)",
    )
    p.add_argument("--family-spread", type=float, default=0.3, help="prototype spread within a family (default 0.3)")
    p.add_argument(
        "--places",
        choices=("uniform", "cities"),
        default="uniform",
        help="component centres: uniform (default) or GeoNames cities",
    )
    add_overwrite_arg(p, folder=True)


def add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="convert a dataset once into a memory-mappable Arrow IPC file (optional)")
    p.add_argument("src", help="Parquet, NPZ, Arrow or WebDataset shards")
    p.add_argument("dest", help="output .arrow file")
    p.add_argument("--shuffle-seed", type=int, default=None, help="also permute the rows (two passes, bounded memory)")
    p.add_argument("--embedding-key", default=None, help="WebDataset: the .npy entry holding the embedding")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DEST")


def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed photos (a folder or a metadata CSV) into a Parquet file")
    p.add_argument("--encoder", default="efficientnet-lite0", help="encoder name (default efficientnet-lite0, offline)")
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    p.add_argument("--images", required=True, help="folder of photos, or CSV (OSV-5M, YFCC/Im2GPS style)")
    p.add_argument("--image-root", default=None, help="CSV: folder the image ids/paths are relative to")
    p.add_argument("--out", required=True, help="output Parquet (resumed if present)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=positive_int, default=2, help="image decoding threads (default 2)")
    p.add_argument(
        "--device", default="cpu", help="torch device (default cpu; under torchrun, cuda means cuda:LOCAL_RANK)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def check_pack(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    check_outputs({"DEST": args.dest}, {"SRC": args.src}, overwrite=args.overwrite)


def check_embed(args: argparse.Namespace) -> None:
    from globeflow.io import check_outputs

    inputs = {"--images": args.images if Path(args.images).is_file() else None, "--encoder-path": args.encoder_path}
    # --out is resumed when it holds embeddings of the same encoder (checked by embed_images).
    check_outputs({"--out": args.out}, inputs, overwrite=True)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from globeflow.data import SyntheticWorld, write_world_dataset
    from globeflow.data.synthetic import city_directions
    from globeflow.io import claim_output_dir

    if args.families is not None and args.families > args.types:
        raise CLIError(f"--families ({args.families}) must not exceed --types ({args.types})")
    if not 0 < args.kappa_min <= args.kappa_max:
        raise CLIError(f"need 0 < --kappa-min <= --kappa-max, got {args.kappa_min} and {args.kappa_max}")
    claim_output_dir(args.out)
    world = SyntheticWorld.make(
        num_types=args.types,
        dim=args.dim,
        sigma=args.sigma,
        seed=args.seed,
        max_components=args.components,
        kappa_range=(args.kappa_min, args.kappa_max),
        families=args.families,
        family_spread=args.family_spread,
        places=city_directions() if args.places == "cities" else None,
    )
    paths = write_world_dataset(args.out, world, args.train, args.test, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from globeflow.data.stream import pack

    rows = pack(
        args.src, args.dest, shuffle_seed=args.shuffle_seed, embedding_key=args.embedding_key, overwrite=args.overwrite
    )
    print(f"{rows} rows packed into {args.dest}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from globeflow.embed import collect_inputs, embed_images
    from globeflow.encoders import ImageEncoder, get_encoder
    from globeflow.training.distributed import env_world

    world = env_world()
    rank, world_size, local = world if world is not None else (0, 1, 0)
    device = args.device
    if world_size > 1 and device.startswith("cuda"):
        import torch

        # One GPU per process; more processes than GPUs share them round-robin.
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    encoder = get_encoder(args.encoder, source=args.encoder_path, device=device)
    if not isinstance(encoder, ImageEncoder):
        raise CLIError(f"--encoder {args.encoder} is a text encoder; embed needs an image encoder")
    items = collect_inputs(args.images, image_root=args.image_root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = embed_images(
        encoder,
        items,
        out,
        batch_size=args.batch_size,
        workers=args.workers,
        rank=rank,
        world_size=world_size,
        progress=not args.no_progress,
        report=stderr,
    )
    if rank == 0:
        print(summary.format())
    return 0


PARSERS = {"synthetic": add_synthetic, "pack": add_pack, "embed": add_embed}
CHECKS = {"synthetic": check_folder_out, "pack": check_pack, "embed": check_embed}
COMMANDS = {"synthetic": cmd_synthetic, "pack": cmd_pack, "embed": cmd_embed}
