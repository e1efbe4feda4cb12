"""The untrusted half of the code rewards: a stdlib-only server that runs a program inside the sandbox.

`python harness.py program.py` (inside the sandbox) reads one hello line from stdin, executes the program, then answers
calls one line at a time:

  trusted side -> harness:  {"token": T, "setup": "..."}                  (hello, once)
  harness -> trusted side:  T {"ready": {"callables": [...], "modules": {name: module}}} | T {"error": "..."}
  trusted side -> harness:  {"id": 1, "call": "f", "method": null, "args": [...], "kwargs": [[k, v], ...]}
  harness -> trusted side:  T {"id": 1, "ok": <value>} | T {"id": 1, "raised": "..."} | T {"id": 1, "error": "..."}

T is a random token per session. Responses go out on a private duplicate of the original stdout; the program's own
fd 0 and 1 point at /dev/null (as HumanEval swallows what a program prints), so nothing it prints or reads touches the
protocol by accident. Nothing here is trusted, though: the program can reach every object of this process, token and
channel included, and so choose any answer it likes, which is no more than it could do by returning it. What keeps
the verdict honest is on the trusted side: tests and expected values never enter the sandbox, and values cross only
as plain data.

The same module holds the value codec, used by both sides. Values are exact built-in types only (`type(x) is int`,
never a subclass with its own `__eq__`):

  None, bool, str        JSON null, true/false, string
  int                    JSON number when |x| <= 2**53, else ["i", hex]
  float                  ["x", float.hex()]  (exact, nan and inf included)
  complex                ["c", real.hex(), imag.hex()]
  bytes                  ["b", hex]
  list, tuple            ["l", [...]], ["t", [...]]
  set, frozenset         ["s", [...]], ["f", [...]]
  dict                   ["d", [[key, value], ...]]
  reference              ["r", name]  (trusted -> harness only: a global of the shared setup code, e.g. a tree node)
"""

import _json  # json's C half: importing json itself (and re with it) would add ~10 ms to every sandbox's start.
import builtins
import os
import sys

_MAX_DEPTH = 100
_SAFE_INT = 2**53
_MAX_JSON_INT_DIGITS = 17


class CodecError(ValueError):
  """A value that cannot be serialised, or data that is not a well-formed encoding."""


def encode(value, refs=None, depth=0):
  """Returns the JSON-ready form of `value`; `refs` maps id(object) -> name for objects sent by reference."""
  if depth > _MAX_DEPTH:
    raise CodecError("value nested too deeply")
  if refs is not None and id(value) in refs:
    return ["r", refs[id(value)]]
  kind = type(value)
  if value is None or kind is bool or kind is str:
    return value
  if kind is int:
    return value if -_SAFE_INT <= value <= _SAFE_INT else ["i", int.__format__(value, "#x")]
  if kind is float:
    return ["x", float.hex(value)]
  if kind is complex:
    return ["c", float.hex(value.real), float.hex(value.imag)]
  if kind is bytes:
    return ["b", bytes.hex(value)]
  if kind is list or kind is tuple or kind is set or kind is frozenset:
    tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}[kind]
    return [tag, [encode(item, refs, depth + 1) for item in value]]
  if kind is dict:
    return ["d", [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in dict.items(value)]]
  raise CodecError("cannot serialise a value of type " + _type_name(value))


def decode(data, refs=None):
  """Inverse of `encode`: rebuilds exact built-in values; `refs` maps name -> object for ["r", name].

  Rejects values made to collide in hash (ints 2**61 - 1 apart, crafted floats or tuples), which would make every
  set or dict of them, here or in the test code that gets them, take quadratic time.
  """
  return _decode(data, refs, 0, _HashGuard())


def _decode(data, refs, depth, guard):
  if depth > _MAX_DEPTH:
    raise CodecError("value nested too deeply")
  if data is None or data is True or data is False or type(data) is str:
    return data
  if type(data) is int:
    if not -_SAFE_INT <= data <= _SAFE_INT:
      raise CodecError("plain JSON integer out of range")
    return data  # Small ints are their own hashes (but for -1 and -2, two values).
  if type(data) is not list or not data or type(data[0]) is not str:
    raise CodecError("malformed value")
  tag, payload = data[0], data[1:]
  if tag in ("i", "x", "b", "r") and (len(payload) != 1 or type(payload[0]) is not str):
    raise CodecError("malformed " + tag + " value")
  if tag == "i":
    text = payload[0]
    if not (text.startswith("0x") or text.startswith("-0x")) or len(text) > 1 << 20:
      raise CodecError("malformed int")
    return guard.add(int(text, 16))
  if tag == "x":
    return guard.add(_float(payload[0]))
  if tag == "c":
    if len(payload) != 2 or type(payload[0]) is not str or type(payload[1]) is not str:
      raise CodecError("malformed complex")
    return guard.add(complex(_float(payload[0]), _float(payload[1])))
  if tag == "b":
    try:
      return bytes.fromhex(payload[0])
    except ValueError:
      raise CodecError("malformed bytes") from None
  if tag == "r":
    if refs is None or payload[0] not in refs:
      raise CodecError("unknown reference")
    return refs[payload[0]]
  if len(payload) != 1 or type(payload[0]) is not list:
    raise CodecError("malformed container")
  items = payload[0]
  try:
    if tag == "l":
      return [_decode(item, refs, depth + 1, guard) for item in items]
    if tag == "t":
      return guard.add(tuple([_decode(item, refs, depth + 1, guard) for item in items]))
    # Elements are decoded (and so checked by the guard) before any set or dict hashes them.
    if tag == "s":
      return set([_decode(item, refs, depth + 1, guard) for item in items])
    if tag == "f":
      return guard.add(frozenset([_decode(item, refs, depth + 1, guard) for item in items]))
    if tag == "d":
      pairs = []
      for pair in items:
        if type(pair) is not list or len(pair) != 2:
          raise CodecError("malformed dict item")
        pairs.append((_decode(pair[0], refs, depth + 1, guard), _decode(pair[1], refs, depth + 1, guard)))
      return dict(pairs)
  except TypeError:  # An unhashable key or set element: no encoder writes that.
    raise CodecError("unhashable key or set element") from None
  raise CodecError("unknown tag " + repr(tag)[:20])


class _HashGuard:
  """Counts the distinct values seen per hash; too many for one hash means the values were built to collide."""

  _MAX_PER_HASH = 16

  def __init__(self):
    self._values_by_hash = {}  # Its keys are hashes, ints that are their own (distinct) hashes: no collisions here.

  def add(self, value):
    try:
      key = hash(value)
    except TypeError:  # A tuple holding a list: no set or dict can hold it.
      return value
    values = self._values_by_hash.setdefault(key, [])
    for seen in values:
      if seen == value:
        return value
    values.append(value)
    if len(values) > self._MAX_PER_HASH:
      raise CodecError("too many distinct values with one hash (built to collide)")
    return value


def _float(text):
  try:
    return float.fromhex(text)
  except (ValueError, OverflowError):
    raise CodecError("malformed float") from None


def _reject_constant(name):
  raise CodecError("JSON constant " + name + " is not a value")


def _reject_float(text):
  raise CodecError("plain JSON float " + text[:20] + " is not a value")


def _parse_int(text):
  if len(text) > _MAX_JSON_INT_DIGITS:
    raise CodecError("plain JSON integer too long")
  return int(text)


class _StrictDecoding:
  """What json's C scanner reads of a decoder: no NaN/Infinity constants, no plain floats, short plain ints."""

  strict = True
  object_hook = None
  object_pairs_hook = None
  parse_float = staticmethod(_reject_float)
  parse_int = staticmethod(_parse_int)
  parse_constant = staticmethod(_reject_constant)


_scan_once = _json.make_scanner(_StrictDecoding())
_JSON_WHITESPACE = " \t\n\r"


def loads(text):
  """Strict JSON: no NaN/Infinity constants, no plain floats, short plain ints (floats and big ints are tagged)."""
  start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
  try:
    value, end = _scan_once(text, start)
  except CodecError:
    raise
  except RecursionError:
    raise CodecError("JSON nested too deeply") from None
  except StopIteration:
    raise CodecError("bad JSON: expecting a value") from None
  except ValueError as e:  # json.decoder.JSONDecodeError, which the C scanner imports only to raise it.
    raise CodecError("bad JSON: " + str(e).split(":")[0]) from None
  if text[end:].strip(_JSON_WHITESPACE):
    raise CodecError("bad JSON: extra data")
  return value


def _not_json(value):
  raise TypeError("a " + _type_name(value) + " is not JSON")


def dumps(obj):
  """One line of JSON, ASCII only, no NaN (everything a float could be is tagged)."""
  # A fresh encoder per call: its cycle markers must not outlive a failed call.
  encoder = _json.make_encoder({}, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False)
  return "".join(encoder(obj, 0))


def _type_name(value):
  try:
    name = type.__getattribute__(type(value), "__qualname__")
  except BaseException:  # A hostile metaclass; the name is only for the message.
    return "?"
  return name if type(name) is str else "?"


def _describe(exc):
  try:
    text = _type_name(exc) + ": " + str(exc)
  except BaseException:
    text = _type_name(exc)
  return text[:1000]


class _Server:
  """Runs the program in its own namespace and answers calls on the private channel."""

  def __init__(self, program_path):
    # Private copies of the protocol's file descriptors; the program's stdin and stdout are /dev/null. os.dup makes
    # non-inheritable descriptors, so the program's child processes do not get them.
    self._in = os.fdopen(os.dup(0), "rb")
    self._out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdin = open(os.devnull, "r", encoding="utf-8")
    sys.stdout = open(os.devnull, "w", encoding="utf-8")
    self._program_path = program_path
    self._token = ""
    self._namespace = {}
    self._setup_globals = {}
    self._instances = {}

  def serve(self):
    hello = loads(self._in.readline().decode("utf-8"))
    self._token = hello["token"]
    ready = self._load_program(hello.get("setup") or "")
    self._send(ready)
    if "error" in ready:
      return
    while True:
      line = self._in.readline()
      if not line:
        return
      self._send(self._answer(line))

  def _load_program(self, setup):
    with open(self._program_path, encoding="utf-8") as f:
      source = f.read()
    namespace = {"__name__": "__solution__", "__builtins__": builtins}
    try:
      if setup:
        exec(compile(setup, "setup.py", "exec"), namespace)
      self._setup_globals = dict(namespace)
      sys.argv = [self._program_path]
      exec(compile(source, self._program_path, "exec"), namespace)
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the program did not load.
      return {"error": "the program raised " + _describe(e)}
    self._namespace = namespace
    callables, modules = [], {}
    for name, value in list(namespace.items()):
      if type(name) is not str or name.startswith("__"):
        continue
      if type(value) is type(sys):
        module_name = getattr(value, "__name__", None)
        if type(module_name) is str:
          modules[name] = module_name
      elif callable(value):
        callables.append(name)
    return {"ready": {"callables": callables, "modules": modules}}

  def _answer(self, line):
    request_id = None
    try:
      request = loads(line.decode("utf-8"))
      request_id = request["id"]
      name, method = request["call"], request.get("method")
      args = decode(request["args"], self._setup_globals)
      kwargs = {k: decode(v, self._setup_globals) for k, v in request["kwargs"]}
    except BaseException as e:
      return {"id": request_id, "error": "bad request: " + _describe(e)}
    try:
      target = self._namespace[name]
      if method is not None:  # One instance per program, as the APPS harness makes one `Solution()`.
        if name not in self._instances:
          self._instances[name] = target()
        target = getattr(self._instances[name], method)
      result = target(*args, **kwargs)
    except BaseException as e:
      return {"id": request_id, "raised": _describe(e)}
    try:
      return {"id": request_id, "ok": encode(result)}
    except BaseException as e:
      return {"id": request_id, "error": _describe(e)}

  def _send(self, message):
    try:
      text = dumps(message)
    except BaseException as e:
      text = dumps({"id": message.get("id"), "error": "unencodable response: " + _describe(e)})
    self._out.write((self._token + " " + text + "\n").encode("ascii"))
    self._out.flush()


if __name__ == "__main__":
  _Server(sys.argv[1]).serve()
