"""The command-line entry every job's main.py goes through.

Each job keeps its own `flags.FlagValues` (jobs share flag names with other
meanings, and the tests load every main in one process). This module gives
such a flag set what `absl.app.run` gives the global one, once for every job:

  --help, --helpshort, -h, -?   the job's docstring and its own flags; exit 0
  --helpfull                    also absl's flags (logging...) and, for the
                                Beam job, every Apache Beam pipeline option
  a missing required flag, a bad value, an unknown flag, a config the job
  rejects (ValueError naming the flag)
                                one line "FATAL Flags parsing error: ..." plus
                                a hint, exit 1, no traceback
  a ValueError or OSError raised while the job runs (a missing file, an
  incomplete dataset, a storage error)
                                one line "FATAL <program>: ...", exit 1; the
                                traceback is logged at --verbosity=1

A job's main.py:

  FLAGS = flags.FlagValues()
  _MODEL_DIR = flags.DEFINE_string("model_dir", None, "...", flag_values=FLAGS)
  flags.mark_flags_as_required(["model_dir"], flag_values=FLAGS)

  def main(argv):                       # raises app.UsageError on bad flags
    config = cli.job_config(config_from_flags, argv)
    ...

  def run_main():                       # the console script
    cli.run(main, flag_values=FLAGS, doc=__doc__)

No flags are defined here at import; the help flags are added to a job's
flag set when it is first parsed.
"""

import dataclasses
import faulthandler
import os
import re
import sys
import textwrap
from typing import Any, Callable, FrozenSet, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

USAGE_HINT = "Pass --help or --helpfull to see help on flags."
_SHORT_HELP = ("help", "helpshort", "h", "?")
_FULL_HELP = ("helpfull",)


@dataclasses.dataclass(frozen=True)
class PassThrough:
  """Options that are not ours but are handed on (Apache Beam's).

  Attributes:
    title: a heading for --helpfull.
    options: every accepted "--name".
    help_text: printed under `title` by --helpfull.
  """
  title: str
  options: FrozenSet[str]
  help_text: str


class _HelpRequested(Exception):  # not a ValueError: absl must not wrap it
  """Raised by a help flag while argv is parsed."""

  def __init__(self, full: bool):
    super().__init__("help")
    self.full = full


class _HelpFlag(flags.BooleanFlag):
  """--help and friends: parsing one stops parsing and prints help."""

  def __init__(self, name: str, short_name: Optional[str], full: bool):
    super().__init__(name, False, "Show this job's flags and exit." if not full
                     else "Show every flag (absl's and pass-through ones too) and exit.",
                     short_name=short_name, allow_hide_cpp=True)
    self._full = full

  def parse(self, argument):
    if self._parse(argument):
      raise _HelpRequested(full=self._full)


def _add_standard_flags(flag_values: flags.FlagValues):
  """Help flags, then absl's global flags (logging...), once per flag set."""
  if "helpfull" in flag_values:
    return
  module = __name__
  for flag in (_HelpFlag("help", "h", full=False),
               _HelpFlag("helpshort", "?", full=False),
               _HelpFlag("helpfull", None, full=True)):
    flag_values.register_flag_by_module(module, flag)
    flag_values[flag.name] = flag
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if name not in flag_values and name == flag.name:  # skip short aliases
      flag_values[name] = flag
      module_name = flags.FLAGS.find_module_defining_flag(name)
      if module_name:
        flag_values.register_flag_by_module(module_name, flag)


def program_name() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "textgen"


_MISSING = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")


def usage_error(message: str, *, exit_code: int = 1):
  """Prints the one-line usage error and exits (no traceback)."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  missing = [m.group(1) for m in map(_MISSING.fullmatch, lines) if m]
  if missing:  # absl says it once per flag, in two sentences
    lines = [f"missing required flag{'s' if len(missing) > 1 else ''} "
             + ", ".join(f"--{name}" for name in missing)] + [
                 line for line in lines if not _MISSING.fullmatch(line)]
  one_line = "; ".join(lines)
  sys.stderr.write(f"FATAL Flags parsing error: {one_line}\n{USAGE_HINT}\n")
  sys.exit(exit_code)


def help_text(flag_values: flags.FlagValues, *, doc: str, module: str, full: bool,
              pass_through: Optional[PassThrough] = None) -> str:
  """What --help (full=False) or --helpfull (full=True) prints."""
  parts = [textwrap.dedent(doc or "").strip(), ""]
  if full:
    parts += ["Flags:", flag_values.get_help()]
    if pass_through is not None:
      parts += ["", f"{pass_through.title}:", pass_through.help_text.rstrip()]
  else:
    parts += [f"Flags of {program_name()}:", flag_values.module_help(module),
              "", "Try --helpfull to see every flag (absl's too"
              + (f", and {pass_through.title}" if pass_through else "") + ")."]
  return "\n".join(parts).rstrip() + "\n"


def parse(flag_values: flags.FlagValues, argv: Sequence[str], *,
          module: str, doc: str = "",
          pass_through: Optional[Callable[[], PassThrough]] = None) -> List[str]:
  """Parses `argv` into `flag_values` (and absl's own flags).

  Args:
    flag_values: the job's flag set.
    argv: the command line, program name first.
    module: the module that defines the job's flags (for --help).
    doc: the job's usage text (its main.py docstring).
    pass_through: if given, flags that are not ours are returned instead of
      rejected, provided the PassThrough it returns accepts them.

  Returns:
    [program name] + the arguments left over (pass-through flags).

  Raises:
    flags.Error: bad, unknown or missing flags (`run` prints it on one line).
    SystemExit: after printing help (code 0).
  """
  _add_standard_flags(flag_values)
  flag_values.unparse_flags()  # a second parse (tests) starts from the defaults
  try:
    rest = flag_values(list(argv), known_only=pass_through is not None)
  except _HelpRequested as request:
    sys.stdout.write(help_text(flag_values, doc=doc, module=module, full=request.full,
                               pass_through=pass_through() if pass_through else None))
    sys.exit(0)
  flags.FLAGS.mark_as_parsed()  # absl.logging reads the global flags
  leftover = rest[1:]
  if pass_through is not None:
    accepted = pass_through()
    unknown = [a for a in leftover
               if a.startswith("--") and a.split("=", 1)[0] not in accepted.options]
    if unknown:
      raise flags.Error(f"Unknown command line flag(s) {', '.join(unknown)} "
                        f"(neither {program_name()} flags nor {accepted.title})")
  return [rest[0]] + leftover


def job_config(config_from_flags: Callable[[], Any], argv: Optional[Sequence[str]] = None):
  """The job's config from its parsed flags; a value the config rejects
  (ValueError) or a stray argument in `argv` (None: arguments are the job's
  to check) is a usage error."""
  if argv is not None and len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  try:
    return config_from_flags()
  except ValueError as err:
    raise app.UsageError(str(err)) from None


def run(main: Callable[[List[str]], None], *, flag_values: flags.FlagValues,
        doc: str, pass_through: Optional[Callable[[], PassThrough]] = None):
  """The console-script entry: parse flags, run `main`, report errors.

  Args:
    main: the job's main(argv); raises app.UsageError for bad flag values.
    flag_values: the job's flag set.
    doc: the job's usage text (its main.py docstring).
    pass_through: see `parse`.
  """
  module = main.__module__
  logging.use_absl_handler()  # as app.run does: absl's log format on stderr
  faulthandler.enable()
  try:
    argv = parse(flag_values, sys.argv, module=module, doc=doc, pass_through=pass_through)
  except flags.Error as err:
    usage_error(str(err))
  if flags.FLAGS["verbosity"].using_default_value:
    flags.FLAGS.verbosity = 0  # INFO, as app.run does
  try:
    main(argv)
  except app.UsageError as err:
    usage_error(str(err), exit_code=err.exitcode)
  except (ValueError, OSError) as err:
    # Bad input found while running (a missing file, an incomplete dataset,
    # a bucket that does not exist): the message names it; the traceback
    # is for --verbosity=1.
    logging.debug("Traceback:", exc_info=True)
    one_line = " ".join(str(err).split("\n"))
    sys.stderr.write(f"FATAL {program_name()}: {one_line}\n")
    sys.exit(1)
