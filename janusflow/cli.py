"""The ``janusflow`` command. Each subcommand is one function registered with ``@command``; the
work lives in the library (pipeline, understanding, parity), this file parses and prints.
Subcommands may live elsewhere: every ``janusflow/<subpackage>/cli.py`` is imported before parsing,
so a module there registers its own with ``@command`` (e.g. ``serve``). A two-word name registers a
subcommand of a group: ``@command("eval shapes", ...)`` is ``janusflow eval shapes``; ``command_group``
gives the group its help.

Bad input ends with one line on stderr (``janusflow: error: ...``) and a non-zero exit: 1 for bad
input or files, 2 for bad usage or when no model is given and no default model is installed.
Set JANUSFLOW_DEBUG=1 to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, JanusFlowError, JanusFlowWarning

PROG = "janusflow"


class NoModelError(JanusFlowError):
    """No --model and no embedded default model."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {_printable(message)}\n")


@dataclass
class Command:
    name: str
    help: str
    arguments: tuple
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}
GROUPS: dict[str, str] = {}  # group name -> help, for two-word commands ("eval shapes")


def arg(*flags: str, **kwargs) -> tuple:
    return flags, kwargs


def command(name: str, help: str, *arguments: tuple):
    """Register ``run(args) -> exit code`` as subcommand ``name`` with ``arg(...)`` arguments."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, arguments, run)
        return run
    return register


def command_group(name: str, help: str) -> None:
    """The help of ``janusflow NAME``, whose subcommands register as ``@command("NAME sub", ...)``."""
    GROUPS[name] = help


# -- shared options -------------------------------------------------------------------------------------

MODEL = (
    arg("--model", metavar="DIR", help="model folder (ours or the official layout); default: the embedded model"),
    arg("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    arg("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="auto: fp32 on CPU, bf16 on CUDA"),
    arg("--quantize", choices=("none", "int8"), default="none",
        help="int8: the LLM's linear layers in int8 (faster on a CPU; see BENCHMARKS.md)"),
)
SAMPLING = (  # diffusers' names; the older spellings stay as aliases
    arg("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=30, metavar="N",
        help="ODE steps (alias --steps)"),
    arg("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=2.0, metavar="W",
        help="classifier-free guidance weight w (alias --cfg)"),
    arg("--num-images-per-prompt", "--n-samples", dest="num_images_per_prompt", type=int, default=1, metavar="K",
        help="images per prompt (alias --n-samples)"),
)
DECODING = (
    arg("--max-new-tokens", type=int, default=512),
    arg("--temperature", type=float, default=0.0, help="0 = greedy"),
    arg("--top-p", type=float, default=1.0),
    arg("--seed", type=int, default=0, help="for sampling (temperature > 0)"),
)


def model_dir(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from .pipeline import default_model_dir

    found = default_model_dir()
    if found is None:
        raise NoModelError("no default model is installed yet (janusflow/default_model/); pass --model DIR, a "
                           "JanusFlow folder in our layout or the official one")
    return found


def check_images_per_prompt(args: argparse.Namespace) -> None:
    if args.num_images_per_prompt < 1:
        raise InputError(f"--num-images-per-prompt (--n-samples) must be at least 1, got {args.num_images_per_prompt}")


def torch_dtype(args: argparse.Namespace):
    import torch

    return {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]


def decoding_config(args: argparse.Namespace):
    from .understanding import DecodingConfig

    config = DecodingConfig(args.max_new_tokens, args.temperature, args.top_p)
    config.validate()
    return config


def load_chat(args: argparse.Namespace):
    from .understanding import JanusFlowChat

    return JanusFlowChat.from_pretrained(model_dir(args), args.device, torch_dtype(args), args.quantize)


# -- subcommands ----------------------------------------------------------------------------------------

@command("parity", "recompute a parity fixture of the official implementation",
         arg("fixture", metavar="FIXTURE_DIR"))
def parity(args: argparse.Namespace) -> int:
    from .parity import TOLERANCE, run_parity

    if not Path(args.fixture).is_dir():
        raise InputError(f"fixture folder not found: {args.fixture}")
    results = run_parity(args.fixture)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  max|diff| {r.max_abs_diff:.3e}  {'ok' if r.ok else 'FAIL'}")
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} outputs within {TOLERANCE:g}")
    return 1 if failed else 0


@command("generate", "text to image: PNGs in a folder, or the GenEval layout",
         arg("prompt", nargs="?", help="the prompt (or --geneval-metadata)"),
         arg("--out", required=True, metavar="DIR", help="writes DIR/0000.png ... (GenEval: DIR/00000/samples/...)"),
         arg("--geneval-metadata", metavar="FILE", help="one JSON object a line with at least \"prompt\""),
         arg("--vae", metavar="DIR", help="diffusers AutoencoderKL folder (default: MODEL/vae)"),
         *SAMPLING,
         arg("--negative-prompt", default=None, metavar="TEXT",
             help="its rows replace the unconditional rows of guidance (default: the release's pad rows)"),
         arg("--guidance-interval", nargs=2, type=float, default=None, metavar=("T_LO", "T_HI"),
             help="guide only for T_LO <= t <= T_HI (t = 0 noise, 1 data); default: every step"),
         arg("--seed", type=int, default=0),
         arg("--solver", default="euler", help="euler, heun or midpoint (the scheduler)"),
         arg("--schedule", default="uniform", help="uniform or shifted (the scheduler's shift 3)"),
         arg("--batch-size", type=int, default=None, help="images sampled together (default: all)"),
         arg("--candidates", type=int, default=None, metavar="N",
             help="draw each image up to N times and keep the one the judge scores best (1: plain sampling; "
                  "default: the model's image_generation_config.json, 4 for the embedded model, else 1)"),
         arg("--judge", default=None, metavar="NAME",
             help="the best-of judge, a registered name (default: the model's, else shapes: the model's own "
                  "answers about shapes-world prompts)"),
         *MODEL)
def generate(args: argparse.Namespace) -> int:
    from .pipeline import JanusFlowPipeline, generate_geneval, generate_to_folder, read_geneval_metadata
    from .sampler import SamplerConfig

    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    SamplerConfig(args.num_inference_steps, args.guidance_scale, args.solver, args.schedule,
                  guidance_interval=interval).validate()  # before loading anything
    check_images_per_prompt(args)
    if args.candidates is not None and args.candidates < 1:
        raise InputError(f"--candidates must be at least 1, got {args.candidates}")
    if (args.prompt is None) == (args.geneval_metadata is None):
        raise InputError("give either a prompt or --geneval-metadata FILE")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("the prompt is empty")
    if args.geneval_metadata:
        read_geneval_metadata(args.geneval_metadata)
    folder = model_dir(args)
    pipe = JanusFlowPipeline.from_pretrained(folder, vae=args.vae, device=args.device, dtype=torch_dtype(args),
                                             quantize=args.quantize)
    if pipe.vae is None:
        raise InputError(f"no VAE: {folder} has no vae/ folder; pass --vae DIR (a diffusers AutoencoderKL)")
    settings = dict(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                    solver=args.solver, schedule=args.schedule, batch_size=args.batch_size)
    if args.negative_prompt is not None:
        settings["negative_prompt"] = args.negative_prompt
    if interval is not None:
        settings["guidance_interval"] = interval
    if args.candidates is not None:  # else the model's default (JanusFlowPipeline.resolve_candidates)
        settings["candidates"] = args.candidates
        if args.candidates > 1:
            settings["judge"] = best_of_judge(pipe, args.judge)
    elif args.judge is not None:
        settings["judge"] = best_of_judge(pipe, args.judge)
    n = args.num_images_per_prompt
    if args.geneval_metadata:
        done, skipped = generate_geneval(pipe, args.geneval_metadata, args.out, n, args.seed, **settings)
        print(f"wrote {done} prompt folder(s) to {args.out}" + (f" ({skipped} already complete)" if skipped else ""))
    else:
        for path in generate_to_folder(pipe, args.prompt, args.out, n, args.seed, **settings):
            print(path)
    return 0


def best_of_judge(pipe, name: str | None):
    """The judge named on the command line, else the model folder's, else "shapes" (janusflow.judges)."""
    from .judges import judge_names, make_judge

    if name is None and pipe.default_judge() is not None:
        return pipe.default_judge()
    try:
        return make_judge(name or "shapes", pipe.model, pipe.processor)
    except KeyError:
        raise InputError(f"--judge: no judge named {name!r} (known: {judge_names()})") from None


@command("ask", "answer a question about images; or a LLaVA question file",
         arg("inputs", nargs="*", metavar="IMAGE... QUESTION", help="zero or more images, then the question"),
         arg("--question-file", metavar="Q.jsonl"), arg("--image-folder", metavar="DIR"),
         arg("--answers-file", metavar="A.jsonl"), arg("--batch-size", type=int, default=8),
         arg("--model-id", default=None, help="model_id written in the answers (default: the model folder's name)"),
         arg("--num-chunks", type=int, default=1, help="split the question file into this many chunks (LLaVA's split)"),
         arg("--chunk-idx", type=int, default=0, help="answer this chunk (0-based) of --num-chunks"),
         arg("--no-stream", action="store_true", help="print the answer at the end instead of token by token"),
         *DECODING, *MODEL)
def ask(args: argparse.Namespace) -> int:
    from .processor import load_image
    from .understanding import print_streamer, user_message

    config = decoding_config(args)
    if args.question_file:
        from .eval.llava import answer_llava_questions, get_chunk, read_llava_questions

        if args.inputs or not args.answers_file:
            raise InputError("with --question-file give --answers-file (and --image-folder), no positional inputs")
        get_chunk(read_llava_questions(args.question_file, args.image_folder), args.num_chunks, args.chunk_idx)
        chat = load_chat(args)
        model_id = args.model_id or model_dir(args).resolve().name
        n = answer_llava_questions(chat, args.question_file, args.image_folder, args.answers_file, model_id,
                                   args.batch_size, config, generator=args.seed, num_chunks=args.num_chunks,
                                   chunk_idx=args.chunk_idx)
        print(f"wrote {n} answer(s) to {args.answers_file}")
        return 0
    if not args.inputs:
        raise InputError("give the image(s) and a question, or --question-file")
    *images, question = args.inputs
    message = user_message(question, [load_image(p) for p in images])  # checks the files before loading
    chat = load_chat(args)
    if args.no_stream:
        print(chat.answer([[message]], config, args.seed)[0])
    else:
        chat.generate([[message]], config, args.seed, streamer=print_streamer(chat.processor.tokenizer))
    return 0


@command("chat", "interactive chat about images (/image PATH, /reset, /quit)",
         arg("--image", action="append", default=[], metavar="PATH", help="image(s) for the first question"),
         *DECODING, *MODEL)
def chat(args: argparse.Namespace) -> int:
    from .processor import load_image
    from .understanding import Conversation, print_streamer

    config = decoding_config(args)
    pending = [load_image(p) for p in args.image]
    session = load_chat(args)
    conversation = Conversation()
    print("janusflow chat: /image PATH adds an image to your next message, /reset starts over, /quit leaves",
          file=sys.stderr)
    while True:
        print("User: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/image"):
            try:
                pending.append(load_image(text[len("/image"):].strip()))
            except InputError as e:  # stay in the chat
                print(f"{PROG}: error: {e}", file=sys.stderr)
            continue
        if text == "/reset":
            conversation, pending = Conversation(), []
            continue
        conversation.add_user(text, pending)
        pending = []
        print("Assistant: ", end="", flush=True)
        result = session.generate([conversation.messages], config, args.seed,
                                  streamer=print_streamer(session.processor.tokenizer))
        conversation.add_assistant(session.processor.decode(result.tokens[0]).strip())


@command("demo", "the main job: generate images for a prompt and answer a question about an image",
         arg("--model", metavar="DIR", help="model folder (default: the embedded model)"),
         arg("--out", default="janusflow-demo", metavar="DIR", help="where the images go"),
         arg("--prompt", default=None, help="generation prompt (default: a shapes-world prompt)"),
         arg("--num-images-per-prompt", "--n-samples", dest="num_images_per_prompt", type=int, default=4,
             metavar="K", help="images generated (alias --n-samples)"),
         arg("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=30, metavar="N",
             help="ODE steps (alias --steps)"))
def demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_PROMPT, run_demo

    if args.num_images_per_prompt < 1 or args.num_inference_steps < 1:
        raise InputError("--num-images-per-prompt (--n-samples) and --num-inference-steps (--steps) must be at least 1")
    run_demo(args.model, args.out, args.prompt or DEMO_PROMPT, args.num_images_per_prompt, args.num_inference_steps)
    return 0


# -- entry point ----------------------------------------------------------------------------------------

def load_extensions() -> None:
    """Import ``janusflow.<subpackage>.cli`` for every subpackage that has one (they register commands)."""
    import importlib
    import pkgutil

    package = Path(__file__).resolve().parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.ispkg and (package / info.name / "cli.py").is_file():
            try:
                importlib.import_module(f"{__package__}.{info.name}.cli")
            except ImportError as e:  # an optional dependency is missing: those commands are unavailable
                print(f"{PROG}: note: the {info.name} commands are unavailable ({e})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    load_extensions()
    from . import __version__

    parser = _Parser(prog=PROG, description="JanusFlow: image understanding and rectified-flow generation")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for c in COMMANDS.values():
        group, _, name = c.name.rpartition(" ")
        if group and group not in groups:
            about = GROUPS.get(group, "")
            groups[group] = subparsers.add_parser(group, help=about, description=about).add_subparsers(
                dest=f"{group}_command", metavar="COMMAND", required=True)
        sub = (groups[group] if group else subparsers).add_parser(name, help=c.help, description=c.help)
        for flags, kwargs in c.arguments:
            sub.add_argument(*flags, **kwargs)
        sub.set_defaults(run=c.run)
    return parser


def _printable(text: str) -> str:
    """``text`` on one line: control and other unprintable characters (echoed arguments may hold any) escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _one_line(error: BaseException) -> str:
    text = _printable(" ".join(str(error).split())) or type(error).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def _one_line_warnings(show: Callable) -> Callable:
    """``warnings.showwarning`` printing our own warnings as one line of the command's output, and
    anyone else's through ``show`` (as Python shows them)."""

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, JanusFlowWarning):
            print(f"{PROG}: note: {_one_line(message)}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed on one line
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", JanusFlowWarning)
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return int(args.run(args) or 0)
    except NoModelError as e:
        print(f"{PROG}: {_one_line(e)}", file=sys.stderr)
        return 2
    except (JanusFlowError, OSError, ValueError) as e:
        if os.environ.get("JANUSFLOW_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # run the package's module, where extensions register their commands
    from janusflow.cli import main as package_main

    sys.exit(package_main())
