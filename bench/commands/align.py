"""``bench align``: warp every face of an image folder onto the SphereFace (96x112) or ArcFace (112x112)
template with a 5-point similarity transform, keeping the ``identity/file`` layout.

Landmarks come from a landmark file in the SphereFace repositories' format (``--landmarks``: a path and
ten numbers x1 y1 ... x5 y5 per line); images it does not list are run through MTCNN, whose weights come
from ``--mtcnn-weights DIR``, ``$MARGINBENCH_MTCNN_WEIGHTS``, or an installed facenet-pytorch
(``pip install --no-deps facenet-pytorch==2.6.0``). Reruns skip images already written.

    bench align --src data/CASIA-WebFace --dst data/casia-112x96 --template sphereface
    bench align --src data/lfw --dst data/lfw-112x96 --template sphereface --landmarks lfw_landmark.txt
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="align a face folder to the SphereFace or ArcFace template",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, metavar="DIR", help="folder of identity/image files")
    p.add_argument("--dst", required=True, metavar="DIR", help="output folder (same layout; created)")
    p.add_argument("--template", choices=["sphereface", "arcface"], default="sphereface",
                   help="sphereface: 96x112 (W x H), arcface: 112x112 (default: sphereface)")
    p.add_argument("--landmarks", default=None, metavar="FILE",
                   help="landmark file: a path and ten numbers x1 y1 ... x5 y5 per line; unlisted images use MTCNN")
    p.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                   help="folder with MTCNN's pnet.pt, rnet.pt, onet.pt (default: $MARGINBENCH_MTCNN_WEIGHTS, "
                        "then an installed facenet-pytorch's data folder)")
    p.add_argument("--no-detect", action="store_true",
                   help="never run MTCNN: images missing from --landmarks are skipped")
    p.add_argument("--one-based", action="store_true",
                   help="the landmark file has MATLAB 1-based coordinates (subtract 1)")
    p.add_argument("--device", default=None, help="device for MTCNN, e.g. cuda (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="rewrite images already in --dst")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.align import (
        IMAGE_EXTENSIONS,
        LandmarkFileError,
        MTCNNWeightsError,
        align_folder,
        load_mtcnn,
        read_landmarks,
    )

    try:
        landmarks = read_landmarks(args.landmarks, one_based=args.one_based) if args.landmarks else None
    except (FileNotFoundError, LandmarkFileError) as err:
        print(f"bench align: {err}", file=sys.stderr)
        return 2
    if landmarks is None and args.no_detect:
        print("bench align: --no-detect needs --landmarks FILE (nothing to align with)", file=sys.stderr)
        return 2
    detector = None
    if not args.no_detect:
        from bench.commands.run import check_device

        check_device(args.device, None)  # as bench run: one line, before the weights load
        try:
            detector = load_mtcnn(args.mtcnn_weights, device=args.device)
        except MTCNNWeightsError as err:
            if landmarks is None:
                print(f"bench align: {err}", file=sys.stderr)
                return 2
            print(f"bench align: warning: no MTCNN, so images missing from {args.landmarks} are skipped: {err}",
                  file=sys.stderr)

    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(unit="img", desc="align", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        summary = align_folder(args.src, args.dst, template=args.template, landmarks=landmarks, detector=detector,
                               overwrite=args.overwrite, progress=progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"bench align: {err}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if summary.aligned + summary.existing + len(summary.skipped) == 0:
        print(f"bench align: no images ({', '.join(IMAGE_EXTENSIONS)}) under {args.src}", file=sys.stderr)
        return 1
    print(f"{args.src} -> {args.dst} ({args.template}): {summary}")
    for rel, reason in summary.skipped[:20]:
        print(f"  skipped {rel}: {reason}")
    if len(summary.skipped) > 20:
        print(f"  ... and {len(summary.skipped) - 20} more skipped")
    return 0 if summary.aligned + summary.existing > 0 or not summary.skipped else 1
