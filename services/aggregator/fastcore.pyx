# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The aggregator's compiled core: ``ticks`` body bytes in, microbars and tick-cache batches out.

``TickCore.feed(buf, start)`` reads the msgpack of a ``ticks`` body itself (one pass, no Python object per
event), runs the microbar maths of ``docs/microbars.md`` on C doubles and copies each event's msgpack map
into its symbol's *hold*, which goes to the tick cache ``hold_max`` events at a time. The decoded msgspec
``Struct`` per event (its floats, its int, its symbol string) was two thirds of the live loop's
instructions (callgrind, docs/performance.md); here an event costs its bytes.

The reader accepts only what it can prove msgspec's ``list[MarketEvent]`` decoder turns into the same
values: the maps msgspec writes for ``Trade``, ``Quote`` and ``IndexValue`` (keys in any order; floats as
float64/float32 or non-negative integers; the ``Meta`` constraints ``ge=0`` checked, NaN refused) and
symbols that are valid UTF-8. Anything else (an unknown or repeated key, a wrong type, trailing bytes)
makes ``feed`` return -1 *before anything changes*; the caller then decodes the body with msgspec, which
refuses it with its own message or accepts it, and feeds the events re-encoded (canonical, accepted).
So frames are validated exactly as before, and the core never guesses.

The bar maths is the plain sequential form of the contract: every event finds each interval's bar
(close, reuse or late) and adds to it in stream order, the same additions in the same order as
``services/aggregator/pybars.py`` (the pure-Python implementation, used without a compiler), so bars are
bit-identical (tests/aggregator/test_aggregator_compiled.py compares the two on random streams).
"""

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int32_t, int64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

import itertools

import msgspec

from services.aggregator.pybars import core_intervals
from spx_common.models import MicroBar, WireSchemaDrift, tick_wire_schema, wire_schema_drift

cdef object _ENCODER = msgspec.msgpack.Encoder()
cdef object _EVENTS_DECODER = None  # built on first use (on_events' error message)

#: intervals a core aggregates at most
MAX_INTERVALS = 8


# ---------------------------------------------------------------------------------------- the tick wire
# What the byte reader accepts is stated once, in the tables below (``_KEYS``, ``_MAPS``, ``_SOURCES``): the
# C lookups are built from them when the module is imported, and the same tables, described as
# ``WIRE_SCHEMA``, are checked against ``spx_common/models.py`` then (``check_wire_schema``): a field, a
# required/optional change or a ``Source`` value that is in the models and not here makes the import fail
# (``WireSchemaDrift``, an ImportError), so the plain-Python core runs instead of a reader that would refuse
# (or worse, accept) what msgspec decides otherwise; tests/aggregator/test_wire_schema.py fails on it.

cdef enum:
    _MAX_IV = 8
    K_TRADE = 0
    K_QUOTE = 1
    K_VALUE = 2
    # readers: how a key's value is read (and what it must be)
    R_TAG = 1      # the tagged union's tag: a one-character str naming the map's kind
    R_STR = 2      # a str (UTF-8 checked where it is used: the symbol)
    R_NS = 3       # an int >= 0 (below MAX_TS: the core's own bound)
    R_INT = 4      # any int msgspec reads (int64 or uint64)
    R_NONNEG = 5   # a float >= 0, not NaN: float64, float32 or an int
    R_BOOL = 6
    R_INTS = 7     # an array of ints
    R_SOURCE = 8   # a str among _SOURCES
    # destinations: where a value read goes in Ev
    D_NONE = 0
    D_SYM = 1
    D_TS = 2
    D_A = 3
    D_B = 4
    D_C = 5
    D_D = 6
    D_EXCL = 7
    _MAX_KEYS = 32
    _KEY_SLOTS = 64   # open-addressing table of key names (a power of two, at least twice _MAX_KEYS)
    _MAX_SOURCES = 8

#: the keys of tick maps: (wire key, reader, destination)
_KEYS = (
    ("k", R_TAG, D_NONE), ("sym", R_STR, D_SYM), ("ts", R_NS, D_TS), ("seq", R_INT, D_NONE),
    ("price", R_NONNEG, D_A), ("size", R_NONNEG, D_B), ("exch", R_INT, D_NONE), ("cond", R_INTS, D_NONE),
    ("excl", R_INT, D_EXCL), ("bid", R_NONNEG, D_A), ("ask", R_NONNEG, D_B), ("bid_size", R_NONNEG, D_C),
    ("ask_size", R_NONNEG, D_D), ("bid_exch", R_INT, D_NONE), ("ask_exch", R_INT, D_NONE),
    ("value", R_NONNEG, D_A), ("source", R_SOURCE, D_NONE), ("backfilled", R_BOOL, D_NONE),
)
#: the maps: (tag, kind, required keys, optional keys); a trade's a, b: price, size; a quote's a..d: bid, ask,
#: bid size, ask size; an index value's a: value
_MAPS = (
    ("t", K_TRADE, ("k", "sym", "price", "ts"), ("size", "seq", "exch", "cond", "source", "backfilled", "excl")),
    ("q", K_QUOTE, ("k", "sym", "bid", "ask", "ts"),
     ("bid_size", "ask_size", "seq", "bid_exch", "ask_exch", "source", "backfilled")),
    ("v", K_VALUE, ("k", "sym", "value", "ts"), ("source", "backfilled")),
)
#: the values of ``source`` (models.Source)
_SOURCES = ("tick", "poll", "replay", "backfill")

#: how models.wire_schema_text names what each reader reads
_READER_TEXT = {R_TAG: "tag", R_STR: "str", R_NS: "int>=0", R_INT: "int", R_NONNEG: "float>=0", R_BOOL: "bool",
                R_INTS: "list[int]", R_SOURCE: "|".join(repr(v) for v in sorted(_SOURCES))}


cdef struct Key:
    uint64_t w[2]      # the name's bytes, zero-padded to 16, as two words (compared word by word)
    Py_ssize_t len     # 0: an empty slot
    int index          # position in _KEYS (its bit in a map's "seen" mask)


cdef Key _key_slots[_KEY_SLOTS]
cdef int _key_reader[_MAX_KEYS]
cdef int _key_dest[_MAX_KEYS]
cdef uint8_t _tag_char[3]
cdef uint32_t _map_ok[3]       # keys a map of each kind may have
cdef uint32_t _map_need[3]     # keys it must have
cdef uint64_t _mask[16][2]    # words of n 0xFF bytes then zeros, for a key of n bytes
cdef char _source[_MAX_SOURCES][16]
cdef Py_ssize_t _source_len[_MAX_SOURCES]
cdef int _nsources = 0


cdef inline Py_ssize_t _key_slot(const uint8_t* s, Py_ssize_t ln) noexcept nogil:
    return (ln * 7 + s[0] * 3 + s[ln - 1]) & (_KEY_SLOTS - 1)


def _build_tables():
    """The C lookups from ``_KEYS``, ``_MAPS`` and ``_SOURCES`` (at import)."""
    global _nsources
    cdef Py_ssize_t j
    cdef bytes b
    cdef char pad[16]
    for j in range(16):
        memset(pad, 0, 16)
        memset(pad, 0xFF, j)
        memcpy(_mask[j], pad, 16)
    if len(_KEYS) > _MAX_KEYS or len(_SOURCES) > _MAX_SOURCES:
        raise ValueError("fastcore: more tick keys or sources than its tables hold")
    for j in range(_KEY_SLOTS):
        _key_slots[j].len = 0
    index = {}
    for k, (name, reader, dest) in enumerate(_KEYS):
        b = name.encode()
        if not 0 < len(b) < 16 or name in index:
            raise ValueError(f"fastcore: bad or repeated tick key {name!r}")
        if not (reader == R_NONNEG and D_A <= dest <= D_D or reader == R_NS and dest in (D_NONE, D_TS)
                or reader == R_STR and dest in (D_NONE, D_SYM) or reader == R_INT and dest in (D_NONE, D_EXCL)
                or dest == D_NONE and reader in (R_TAG, R_BOOL, R_INTS, R_SOURCE)):
            raise ValueError(f"fastcore: tick key {name!r}: reader {reader} cannot fill destination {dest}")
        index[name] = k
        _key_reader[k] = reader
        _key_dest[k] = dest
        j = _key_slot(<const uint8_t*>PyBytes_AS_STRING(b), len(b))
        while _key_slots[j].len:
            j = (j + 1) & (_KEY_SLOTS - 1)
        memset(pad, 0, 16)
        memcpy(pad, PyBytes_AS_STRING(b), len(b))
        memcpy(_key_slots[j].w, pad, 16)
        _key_slots[j].len = len(b)
        _key_slots[j].index = k
    for tag, kind, required, optional in _MAPS:
        if len(tag) != 1 or not tag.isascii():
            raise ValueError(f"fastcore: tag {tag!r} is not one ASCII character")
        readers = {_KEYS[index[name]][1] for name in required}
        dests = {_KEYS[index[name]][2] for name in required}
        if R_TAG not in readers or not {D_SYM, D_TS} <= dests:
            raise ValueError(f"fastcore: a {tag!r} map must require its tag, a symbol and a time")
        _tag_char[kind] = ord(tag)
        _map_need[kind] = sum(1 << index[name] for name in required)
        _map_ok[kind] = _map_need[kind] | sum(1 << index[name] for name in optional)
    for j, value in enumerate(_SOURCES):
        b = value.encode()
        if len(b) >= 16:
            raise ValueError(f"fastcore: source {value!r} longer than its table holds")
        memcpy(_source[j], PyBytes_AS_STRING(b), len(b))
        _source_len[j] = len(b)
    _nsources = len(_SOURCES)


_build_tables()

#: the tick maps the reader accepts, described as ``spx_common.models.tick_wire_schema`` describes the models:
#: ``{tag: {wire key: (type text, required)}}``
WIRE_SCHEMA = {tag: {name: (_READER_TEXT[reader], name in required)
                     for name, reader, _ in _KEYS if name in required or name in optional}
               for tag, _, required, optional in _MAPS}


def check_wire_schema(model_schema=None):
    """Raise ``WireSchemaDrift`` naming every difference between what the reader accepts and
    ``model_schema`` (default: ``spx_common.models.tick_wire_schema()``, the models)."""
    drift = wire_schema_drift(WIRE_SCHEMA, tick_wire_schema() if model_schema is None else model_schema)
    if drift:
        raise WireSchemaDrift("the compiled bar core's tick reader (services/aggregator/fastcore.pyx) differs from "
                              "spx_common/models.py: " + "; ".join(drift))


check_wire_schema()

cdef long long NO_DUE = 0x7FFFFFFFFFFFFFFF
#: event times at or beyond this (2116-02-20) are refused: bucket ends and close times stay inside int64
MAX_TS = 1 << 62
cdef long long _MAX_TS = 1LL << 62


cdef struct Ev:
    int kind
    int sid            # symbol id; -1: not known when read (name in the pending list, at index -sid - 2)
    const uint8_t* sym
    Py_ssize_t sym_len
    long long ts
    double a, b, c, d  # trade: price, size; quote: bid, ask, bid size, ask size; value: value
    int excl           # trade: 0 makes bars; 4 volume only (its size in volume and neutral volume, nothing else);
                       # any other value is out of bars (docs/microbars.md): held for the tick cache, no bar maths
    Py_ssize_t start, end  # the event's map in the body


cdef struct Acc:
    long long bucket
    long long start
    long long end
    bint active        # an open bar of this interval exists
    bint has_open      # it has a price (a trade or an index value)
    bint index
    double open, high, low, close
    long long trades, covered, obs, spread_n
    double vol, pv, buy, sell, neutral, sb, sa, ss
    double vonly       # sizes of volume-only trades (excl 4): added to volume and neutral volume at the end
    bint has_last      # a bar of this interval was closed: its bucket and close
    long long last_bucket
    double last_close


cdef struct Sym:
    const char* key    # the name's UTF-8 (owned by a bytes object in TickCore._keys)
    Py_ssize_t key_len
    uint64_t hash
    bint has_quote
    double qbid, qask, qbsz, qasz
    bint index
    bint dirty
    char* hold         # held events' maps, back to back
    Py_ssize_t hold_len, hold_cap
    long long hold_n, hold_last_ts
    Py_ssize_t hnew_off[3]   # newest map of each kind inside the hold (-1: none held)
    Py_ssize_t hnew_len[3]
    char* newest[3]    # newest map of each kind already emitted
    Py_ssize_t newest_len[3]
    Py_ssize_t newest_cap[3]


# ---------------------------------------------------------------------------------------- msgpack reading
# Each reader takes the position of a value and returns the position after it, or -1 when the value is not
# of the accepted formats (or runs past ``n``).

cdef inline uint16_t _be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>_be32(p) << 32) | _be32(p + 4)


cdef inline Py_ssize_t _rd_str(const uint8_t* p, Py_ssize_t i, Py_ssize_t n,
                               const uint8_t** s, Py_ssize_t* ln) noexcept nogil:
    cdef uint8_t b
    cdef Py_ssize_t L
    if i >= n:
        return -1
    b = p[i]
    if 0xA0 <= b <= 0xBF:
        L = b & 0x1F
        i += 1
    elif b == 0xD9:
        if i + 2 > n:
            return -1
        L = p[i + 1]
        i += 2
    elif b == 0xDA:
        if i + 3 > n:
            return -1
        L = _be16(p + i + 1)
        i += 3
    elif b == 0xDB:
        if i + 5 > n:
            return -1
        L = _be32(p + i + 1)
        i += 5
    else:
        return -1
    if i + L > n:
        return -1
    s[0] = p + i
    ln[0] = L
    return i + L


cdef inline Py_ssize_t _rd_int(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, long long* out,
                               bint* big) noexcept nogil:
    """Any msgpack integer. ``big``: a uint64 above the int64 range (``out`` then undefined)."""
    cdef uint8_t b
    cdef uint64_t u
    if i >= n:
        return -1
    b = p[i]
    big[0] = False
    if b <= 0x7F:
        out[0] = b
        return i + 1
    if b >= 0xE0:
        out[0] = <signed char>b
        return i + 1
    if b == 0xCC:
        if i + 2 > n:
            return -1
        out[0] = p[i + 1]
        return i + 2
    if b == 0xCD:
        if i + 3 > n:
            return -1
        out[0] = _be16(p + i + 1)
        return i + 3
    if b == 0xCE:
        if i + 5 > n:
            return -1
        out[0] = _be32(p + i + 1)
        return i + 5
    if b == 0xCF:
        if i + 9 > n:
            return -1
        u = _be64(p + i + 1)
        if u > <uint64_t>0x7FFFFFFFFFFFFFFF:
            big[0] = True
        else:
            out[0] = <long long>u
        return i + 9
    if b == 0xD0:
        if i + 2 > n:
            return -1
        out[0] = <signed char>p[i + 1]
        return i + 2
    if b == 0xD1:
        if i + 3 > n:
            return -1
        out[0] = <short>_be16(p + i + 1)
        return i + 3
    if b == 0xD2:
        if i + 5 > n:
            return -1
        out[0] = <int>_be32(p + i + 1)
        return i + 5
    if b == 0xD3:
        if i + 9 > n:
            return -1
        out[0] = <long long>_be64(p + i + 1)
        return i + 9
    return -1


cdef inline Py_ssize_t _rd_ns(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, long long* out) noexcept nogil:
    """An event time: a non-negative integer (``Ns``: ge=0) below ``MAX_TS``."""
    cdef bint big
    i = _rd_int(p, i, n, out, &big)
    if i < 0 or big or out[0] < 0 or out[0] >= _MAX_TS:
        return -1
    return i


cdef inline Py_ssize_t _rd_nonneg(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, double* out) noexcept nogil:
    """A ``NonNeg`` float: float64, float32 or an integer (msgspec converts it), >= 0, not NaN."""
    cdef uint8_t b
    cdef uint64_t u
    cdef uint32_t w
    cdef double v
    cdef float f
    cdef long long iv
    cdef bint big
    if i >= n:
        return -1
    b = p[i]
    if b == 0xCB:
        if i + 9 > n:
            return -1
        u = _be64(p + i + 1)
        memcpy(&v, &u, 8)
        i += 9
    elif b == 0xCA:
        if i + 5 > n:
            return -1
        w = _be32(p + i + 1)
        memcpy(&f, &w, 4)
        v = f
        i += 5
    else:
        i = _rd_int(p, i, n, &iv, &big)
        if i < 0:
            return -1
        if big:
            v = <double>_be64(p + i - 8)
        else:
            v = <double>iv
    if not v >= 0:  # negative or NaN: msgspec refuses (ge=0)
        return -1
    out[0] = v
    return i


cdef inline Py_ssize_t _rd_head(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* count,
                                uint8_t fix) noexcept nogil:
    """A map (``fix`` = 0x80) or array (``fix`` = 0x90) header in any of its three forms: the fix form
    ``fix``..``fix + 15`` and the 16/32-bit forms (0xDE/0xDF for maps, 0xDC/0xDD for arrays)."""
    cdef uint8_t b
    cdef uint8_t b16 = 0xDE if fix == 0x80 else 0xDC
    if i >= n:
        return -1
    b = p[i]
    if fix <= b <= fix + 0x0F:
        count[0] = b & 0x0F
        return i + 1
    if b == b16:
        if i + 3 > n:
            return -1
        count[0] = _be16(p + i + 1)
        return i + 3
    if b == b16 + 1:
        if i + 5 > n:
            return -1
        count[0] = _be32(p + i + 1)
        return i + 5
    return -1


cdef inline bint _eq(const uint8_t* s, Py_ssize_t ln, const char* lit, Py_ssize_t litlen) noexcept nogil:
    return ln == litlen and memcmp(s, lit, litlen) == 0


cdef inline bint _same(const char* a, const uint8_t* b, Py_ssize_t ln) noexcept nogil:
    """``ln`` bytes equal (keys and sources are a few bytes: a loop the compiler keeps inline, not a call)."""
    cdef Py_ssize_t j
    for j in range(ln):
        if <uint8_t>a[j] != b[j]:
            return False
    return True


cdef inline int _field(const uint8_t* s, Py_ssize_t ln, const uint8_t* end) noexcept nogil:
    """The index of a key in ``_KEYS``, -1 for a key no tick map has (``end``: the end of the buffer)."""
    cdef Py_ssize_t j
    cdef uint64_t w[2]
    cdef char pad[16]
    if ln < 1 or ln > 15:
        return -1
    if s + 16 <= end:  # the usual case (a value follows every key): two loads, masked to the key's length
        memcpy(w, s, 16)
        w[0] &= _mask[ln][0]
        w[1] &= _mask[ln][1]
    else:
        memset(pad, 0, 16)
        for j in range(ln):
            pad[j] = <char>s[j]
        memcpy(w, pad, 16)
    j = _key_slot(s, ln)
    while _key_slots[j].len:
        if _key_slots[j].w[0] == w[0] and _key_slots[j].w[1] == w[1] and _key_slots[j].len == ln:
            return _key_slots[j].index
        j = (j + 1) & (_KEY_SLOTS - 1)
    return -1


cdef inline bint _is_source(const uint8_t* s, Py_ssize_t ln) noexcept nogil:
    cdef int j
    for j in range(_nsources):
        if _source_len[j] == ln and _same(_source[j], s, ln):
            return True
    return False


cdef inline Py_ssize_t _rd_event(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, Ev* ev) noexcept nogil:
    """One tick map into ``ev`` (symbol not resolved); -1 when it is not one the core accepts."""
    cdef Py_ssize_t m, j, ln, cnt, c
    cdef const uint8_t* s
    cdef int f, reader, dest, k
    cdef uint32_t bit
    cdef uint32_t seen = 0
    cdef int kind = -1
    cdef long long iv
    cdef bint big
    cdef double v
    cdef double vals[4]
    vals[0] = vals[1] = vals[2] = vals[3] = 0
    ev.start = i
    ev.excl = 0
    i = _rd_head(p, i, n, &m, 0x80)
    if i < 0:
        return -1
    for j in range(m):
        i = _rd_str(p, i, n, &s, &ln)
        if i < 0:
            return -1
        f = _field(s, ln, p + n)
        if f < 0:
            return -1
        bit = (<uint32_t>1) << f
        if seen & bit:
            return -1
        seen |= bit
        reader = _key_reader[f]
        dest = _key_dest[f]
        if reader == R_NONNEG:
            i = _rd_nonneg(p, i, n, &v)
            vals[dest - D_A] = v
        elif reader == R_INT:
            i = _rd_int(p, i, n, &iv, &big)
            if dest == D_EXCL:
                ev.excl = 1 if big or iv < 0 or iv > 4 else <int>iv
        elif reader == R_NS:
            i = _rd_ns(p, i, n, &iv)
            if dest == D_TS:
                ev.ts = iv
        elif reader == R_STR:
            i = _rd_str(p, i, n, &s, &ln)
            if dest == D_SYM:
                ev.sym = s
                ev.sym_len = ln
        elif reader == R_TAG:
            i = _rd_str(p, i, n, &s, &ln)
            if i < 0 or ln != 1:
                return -1
            for k in range(3):
                if s[0] == _tag_char[k]:
                    kind = k
            if kind < 0:
                return -1
        elif reader == R_INTS:
            i = _rd_head(p, i, n, &cnt, 0x90)
            c = 0
            while i >= 0 and c < cnt:
                i = _rd_int(p, i, n, &iv, &big)
                c += 1
        elif reader == R_SOURCE:
            i = _rd_str(p, i, n, &s, &ln)
            if i >= 0 and not _is_source(s, ln):
                return -1
        elif reader == R_BOOL:
            if i >= n or (p[i] != 0xC2 and p[i] != 0xC3):
                return -1
            i += 1
        if i < 0:
            return -1
    if kind < 0 or (seen & ~_map_ok[kind]) or (seen & _map_need[kind]) != _map_need[kind]:
        return -1
    ev.a = vals[0]
    ev.b = vals[1]
    ev.c = vals[2]
    ev.d = vals[3]
    ev.kind = kind
    ev.end = i
    return i


cdef inline uint64_t _hash(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ s[i]) * 1099511628211ULL
    return h


cdef inline Py_ssize_t _array_header(char* out, Py_ssize_t count) noexcept nogil:
    if count < 16:
        out[0] = <char>(0x90 | count)
        return 1
    if count < 65536:
        out[0] = <char>0xDC
        out[1] = <char>(count >> 8)
        out[2] = <char>(count & 0xFF)
        return 3
    out[0] = <char>0xDD
    out[1] = <char>((count >> 24) & 0xFF)
    out[2] = <char>((count >> 16) & 0xFF)
    out[3] = <char>((count >> 8) & 0xFF)
    out[4] = <char>(count & 0xFF)
    return 5


cdef class TickCore:
    """Microbars and the tick cache's per-symbol batches from ``ticks`` body bytes (see the module docstring;
    the API is :class:`services.aggregator.pybars.PyTickCore`'s, with the same results)."""

    cdef public list intervals
    cdef public bint l2
    cdef readonly bint fill_gaps
    cdef readonly long long allowed_lateness_ns
    cdef readonly Py_ssize_t max_symbols
    cdef readonly long long hold_max
    cdef public object on_hold
    cdef public long long watermark
    cdef public long long late
    cdef public long long refused_symbols
    cdef public long long next_due
    cdef public list closed
    cdef readonly long long max_gap_bars
    cdef public long long gaps_unfilled

    cdef int niv
    cdef long long ivs[_MAX_IV]
    cdef list iv_names
    cdef Sym* syms
    cdef Acc* accs
    cdef Py_ssize_t nsyms, cap
    cdef int* table
    cdef Py_ssize_t table_mask
    cdef list names       # str per symbol id
    cdef list _keys       # bytes per symbol id (owns Sym.key)
    cdef dict ids         # name -> symbol id
    cdef int* dirty
    cdef Py_ssize_t ndirty
    cdef Ev* evs
    cdef Py_ssize_t evs_cap

    def __cinit__(self):
        self.syms = NULL
        self.accs = NULL
        self.table = NULL
        self.dirty = NULL
        self.evs = NULL

    def __init__(self, intervals=("1s", "5s"), *, l2=True, fill_gaps=False, allowed_lateness_ns=250_000_000,
                 max_symbols=5000, hold_max=64, on_hold=None, max_gap_bars=3600):
        cdef int k
        self.intervals = core_intervals(intervals, max_symbols, hold_max, max_gap_bars)
        self.niv = len(self.intervals)
        for k in range(self.niv):
            self.ivs[k] = self.intervals[k][1]
        self.iv_names = [name for name, _ in self.intervals]
        self.l2 = l2
        self.fill_gaps = fill_gaps
        self.allowed_lateness_ns = allowed_lateness_ns
        self.max_symbols = max_symbols
        self.hold_max = hold_max
        self.on_hold = on_hold
        self.max_gap_bars = max_gap_bars
        self.gaps_unfilled = 0
        self.watermark = 0
        self.late = 0
        self.refused_symbols = 0
        self.next_due = NO_DUE
        self.closed = []
        self.names = []
        self._keys = []
        self.ids = {}
        self.nsyms = 0
        self.cap = 0
        self.ndirty = 0
        self._grow_table(64)

    def __dealloc__(self):
        cdef Py_ssize_t i
        cdef int k
        if self.syms != NULL:
            for i in range(self.nsyms):
                free(self.syms[i].hold)
                for k in range(3):
                    free(self.syms[i].newest[k])
        free(self.syms)
        free(self.accs)
        free(self.table)
        free(self.dirty)
        free(self.evs)

    # ------------------------------------------------------------------------------------ symbols

    cdef void _grow_table(self, Py_ssize_t size) except *:
        cdef int* t = <int*>malloc(size * sizeof(int))
        cdef Py_ssize_t i, j, mask = size - 1
        if t == NULL:
            raise MemoryError()
        for i in range(size):
            t[i] = -1
        for i in range(self.nsyms):
            j = self.syms[i].hash & mask
            while t[j] >= 0:
                j = (j + 1) & mask
            t[j] = <int>i
        free(self.table)
        self.table = t
        self.table_mask = mask

    cdef inline int _find(self, const uint8_t* s, Py_ssize_t ln, uint64_t h) noexcept:
        cdef Py_ssize_t j = h & self.table_mask
        cdef int sid
        cdef Sym* st
        while True:
            sid = self.table[j]
            if sid < 0:
                return -1
            st = &self.syms[sid]
            if st.hash == h and st.key_len == ln and memcmp(st.key, s, ln) == 0:
                return sid
            j = (j + 1) & self.table_mask

    cdef int _add_symbol(self, str name) except -2:
        """A new symbol id (the table has room: checked by the caller)."""
        cdef Py_ssize_t newcap, i, j
        cdef int k
        cdef bytes key = name.encode()
        cdef Sym* st
        cdef Acc* acc
        cdef int* k_
        if self.nsyms == self.cap:
            newcap = 16 if self.cap == 0 else 2 * self.cap
            st = <Sym*>realloc(self.syms, newcap * sizeof(Sym))
            if st == NULL:
                raise MemoryError()
            self.syms = st
            acc = <Acc*>realloc(self.accs, newcap * self.niv * sizeof(Acc))
            if acc == NULL:
                raise MemoryError()
            self.accs = acc
            k_ = <int*>realloc(self.dirty, newcap * sizeof(int))
            if k_ == NULL:
                raise MemoryError()
            self.dirty = k_
            self.cap = newcap
        if 2 * (self.nsyms + 1) > self.table_mask + 1:
            self._grow_table(2 * (self.table_mask + 1))
        i = self.nsyms
        st = &self.syms[i]
        st.key = PyBytes_AS_STRING(key)
        st.key_len = PyBytes_GET_SIZE(key)
        st.hash = _hash(<const uint8_t*>st.key, st.key_len)
        st.has_quote = False
        st.qbid = st.qask = st.qbsz = st.qasz = 0.0
        st.index = False
        st.dirty = False
        st.hold = NULL
        st.hold_len = st.hold_cap = 0
        st.hold_n = st.hold_last_ts = 0
        for k in range(3):
            st.hnew_off[k] = -1
            st.hnew_len[k] = 0
            st.newest[k] = NULL
            st.newest_len[k] = -1
            st.newest_cap[k] = 0
        for k in range(self.niv):
            acc = &self.accs[i * self.niv + k]
            acc.active = False
            acc.has_open = False
            acc.has_last = False
            acc.bucket = acc.start = acc.end = 0
            acc.last_bucket = 0
            acc.last_close = 0.0
        j = st.hash & self.table_mask
        while self.table[j] >= 0:
            j = (j + 1) & self.table_mask
        self.table[j] = <int>i
        self.names.append(name)
        self._keys.append(key)
        self.ids[name] = i
        self.nsyms += 1
        return <int>i

    def symbol_count(self):
        return self.nsyms

    def symbol_names(self):
        return list(self.names)

    def symbol_ids(self, names):
        """The symbol id of each name (str), adding new names in the given order as events would add them;
        -1 for a name refused (``max_symbols`` tracked). For :meth:`feed_columns`."""
        cdef Py_ssize_t sid
        out = []
        for name in names:
            sid = self.ids.get(name, -1)
            if sid < 0 and self.nsyms < self.max_symbols:
                sid = self._add_symbol(name)
            out.append(sid)
        return out

    def feed_columns(self, const int32_t[::1] sids, const int8_t[::1] kinds, const int64_t[::1] ts,
                     const double[::1] a, const double[::1] b, const double[::1] c, const double[::1] d,
                     const uint8_t[::1] excl):
        """Aggregate events given as columns, in stream order: the same per-event code as :meth:`feed`
        (watermark, refused symbols, an excluded trade kept out of the bar maths), without the hold.

        ``sids`` from :meth:`symbol_ids` (-1: refused); ``kinds`` 0 trade (``a`` price, ``b`` size), 1 quote
        (``a, b, c, d``: bid, ask, bid size, ask size), 2 index value (``a``); a trade's ``excl``: 0 makes bars,
        4 volume only, any other value out of bars (``Trade.excl``). Times must lie in [0, 2**62) and values be >= 0 (not NaN), as the byte path checks; otherwise
        ValueError before anything changes. The number of events."""
        cdef Py_ssize_t n = sids.shape[0]
        cdef Py_ssize_t e
        cdef int sid
        cdef Ev ev
        if not (kinds.shape[0] == ts.shape[0] == a.shape[0] == b.shape[0] == c.shape[0] == d.shape[0]
                == excl.shape[0] == n):
            raise ValueError("feed_columns: columns of different lengths")
        if self.on_hold is not None:
            raise ValueError("feed_columns does not hold events: use feed() when on_hold is set")
        for e in range(n):
            if ts[e] < 0 or ts[e] >= _MAX_TS or kinds[e] < 0 or kinds[e] > 2 or sids[e] >= self.nsyms \
                    or sids[e] < -1 or not (a[e] >= 0 and b[e] >= 0 and c[e] >= 0 and d[e] >= 0):
                raise ValueError(f"feed_columns: event {e} not accepted (time, kind, symbol id or a value)")
        ev.sym = NULL
        ev.sym_len = 0
        ev.start = ev.end = 0
        for e in range(n):
            ev.ts = ts[e]
            if ev.ts > self.watermark:
                self.watermark = ev.ts
            sid = sids[e]
            if sid < 0:
                self.refused_symbols += 1
                continue
            ev.kind = kinds[e]
            ev.excl = 0
            if ev.kind == K_TRADE and excl[e]:
                if excl[e] != 4:
                    continue  # out of bars; 4 (volume only) takes the bar maths' volume-only branch
                ev.excl = 4
            ev.sid = sid
            ev.a = a[e]
            ev.b = b[e]
            ev.c = c[e]
            ev.d = d[e]
            self._event(sid, &ev)
        return n

    # ------------------------------------------------------------------------------------ bytes in

    def feed(self, object buf, Py_ssize_t start=0):
        """Aggregate the ``ticks`` body ``buf[start:]`` (bytes); the number of events, or -1 when the body is
        not one the core accepts (nothing changed: decode it with msgspec)."""
        cdef bytes b
        if type(buf) is bytes:
            b = <bytes>buf
        else:
            b = bytes(buf)
        return self._feed(b, start)

    cdef Py_ssize_t _feed(self, bytes buf, Py_ssize_t start) except -2:
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t i, count, e, newcap
        cdef Ev* ev
        cdef Ev* evs
        cdef const uint8_t* prev_sym = NULL
        cdef Py_ssize_t prev_len = -1
        cdef int prev_sid = -1
        cdef int sid
        cdef list pending = None
        cdef object name
        if start < 0 or start > n:
            return -1
        i = _rd_head(p, start, n, &count, 0x90)
        if i < 0 or count > n - i:  # every event takes at least one byte: a larger count is a lie
            return -1
        if count > self.evs_cap:
            newcap = max(count, 2 * self.evs_cap, 64)
            evs = <Ev*>realloc(self.evs, newcap * sizeof(Ev))
            if evs == NULL:
                raise MemoryError()
            self.evs = evs
            self.evs_cap = newcap
        evs = self.evs
        # pass 1: read and check every event; resolve known symbols (nothing changes here)
        for e in range(count):
            ev = &evs[e]
            i = _rd_event(p, i, n, ev)
            if i < 0:
                return -1
            if ev.sym_len == prev_len and memcmp(ev.sym, prev_sym, prev_len) == 0:
                ev.sid = prev_sid
                continue
            sid = self._find(ev.sym, ev.sym_len, _hash(ev.sym, ev.sym_len))
            if sid < 0:  # a new name: valid UTF-8? (msgspec's str check)
                try:
                    name = PyUnicode_DecodeUTF8(<const char*>ev.sym, ev.sym_len, NULL)
                except UnicodeDecodeError:
                    return -1
                if pending is None:
                    pending = []
                pending.append(name)
                sid = -1 - len(pending)
            ev.sid = sid
            prev_sym, prev_len, prev_sid = ev.sym, ev.sym_len, sid
        if i != n:
            return -1  # trailing bytes
        # pass 2: aggregate and hold
        for e in range(count):
            ev = &evs[e]
            if ev.ts > self.watermark:
                self.watermark = ev.ts
            sid = ev.sid
            if sid < 0:
                name = pending[-sid - 2]
                sid = self.ids.get(name, -1)
                if sid < 0:
                    if self.nsyms >= self.max_symbols:
                        self.refused_symbols += 1
                        continue
                    sid = self._add_symbol(name)
                # later events of this name in the batch carry the same pending index: resolve them too
                for i in range(e + 1, count):
                    if evs[i].sid == ev.sid:
                        evs[i].sid = sid
                ev.sid = sid
            if ev.excl == 0 or ev.excl == 4:
                self._event(sid, ev)
            if self.on_hold is not None:
                self._hold(sid, p, ev)
        return count

    cdef void _hold(self, int sid, const uint8_t* p, Ev* ev) except *:
        cdef Sym* st = &self.syms[sid]
        cdef Py_ssize_t ln = ev.end - ev.start
        cdef Py_ssize_t need = st.hold_len + ln
        cdef Py_ssize_t cap
        cdef char* h
        if need > st.hold_cap:
            cap = max(need, 2 * st.hold_cap, 1024)
            h = <char*>realloc(st.hold, cap)
            if h == NULL:
                raise MemoryError()
            st.hold = h
            st.hold_cap = cap
        memcpy(st.hold + st.hold_len, p + ev.start, ln)
        st.hnew_off[ev.kind] = st.hold_len
        st.hnew_len[ev.kind] = ln
        st.hold_len = need
        st.hold_n += 1
        st.hold_last_ts = ev.ts
        if st.hold_n >= self.hold_max:
            self._emit(sid)

    cdef void _emit(self, int sid) except *:
        """Hand a symbol's held events to ``on_hold`` as one msgpack array."""
        cdef Sym* st = &self.syms[sid]
        cdef char head[5]
        cdef Py_ssize_t hl = _array_header(head, st.hold_n)
        cdef bytes body = PyBytes_FromStringAndSize(NULL, hl + st.hold_len)
        cdef char* out = PyBytes_AS_STRING(body)
        cdef long long count = st.hold_n
        cdef long long last_ts = st.hold_last_ts
        cdef int k
        cdef Py_ssize_t ln
        cdef char* nb
        memcpy(out, head, hl)
        memcpy(out + hl, st.hold, st.hold_len)
        for k in range(3):
            if st.hnew_off[k] >= 0:
                ln = st.hnew_len[k]
                if ln > st.newest_cap[k]:
                    nb = <char*>realloc(st.newest[k], max(ln, 64))
                    if nb == NULL:
                        raise MemoryError()
                    st.newest[k] = nb
                    st.newest_cap[k] = max(ln, 64)
                memcpy(st.newest[k], st.hold + st.hnew_off[k], ln)
                st.newest_len[k] = ln
                st.hnew_off[k] = -1
        st.hold_len = 0
        st.hold_n = 0
        self.on_hold(self.names[sid], body, count, last_ts)

    def hold_flush(self, sym=None):
        """Emit what is held, for ``sym`` or for every symbol (in the order symbols were first seen)."""
        cdef Py_ssize_t i
        if self.on_hold is None:
            return
        if sym is not None:
            i = self.ids.get(sym, -1)
            if i >= 0 and self.syms[i].hold_n:
                self._emit(<int>i)
            return
        for i in range(self.nsyms):
            if self.syms[i].hold_n:
                self._emit(<int>i)

    def newest(self, sym):
        """msgpack of the newest trade, quote and index value map of ``sym`` (None for a kind never seen);
        tracked while ``on_hold`` is set."""
        cdef Py_ssize_t i = self.ids.get(sym, -1)
        cdef Sym* st
        cdef int k
        out = [None, None, None]
        if i < 0:
            return (None, None, None)
        st = &self.syms[i]
        for k in range(3):
            if st.hnew_off[k] >= 0:
                out[k] = PyBytes_FromStringAndSize(st.hold + st.hnew_off[k], st.hnew_len[k])
            elif st.newest_len[k] >= 0:
                out[k] = PyBytes_FromStringAndSize(st.newest[k], st.newest_len[k])
        return tuple(out)

    def take_dirty(self):
        """Symbols with an aggregated event since the last call, in the order they first had one."""
        cdef Py_ssize_t i
        cdef int sid
        out = []
        for i in range(self.ndirty):
            sid = self.dirty[i]
            self.syms[sid].dirty = False
            out.append(self.names[sid])
        self.ndirty = 0
        return out

    # ------------------------------------------------------------------------------------ bars

    cdef inline void _open(self, Acc* acc, Sym* st, long long bucket, long long iv) noexcept:
        """A new bar (or a quotes-only bar's accumulator reused) at ``bucket``; the quote in force at its
        start is its first observation."""
        cdef long long due
        acc.bucket = bucket
        acc.start = bucket * iv
        acc.end = acc.start + iv
        acc.index = st.index
        acc.vol = acc.pv = acc.buy = acc.sell = acc.neutral = acc.vonly = 0.0
        acc.sb = acc.sa = acc.ss = 0.0
        acc.obs = acc.spread_n = 0
        acc.trades = acc.covered = 0
        if st.has_quote:
            acc.sb += st.qbsz
            acc.sa += st.qasz
            acc.obs = 1
            if st.qbid > 0 and st.qask > 0 and st.qask >= st.qbid:
                acc.ss += (st.qask - st.qbid) / ((st.qask + st.qbid) / 2) * 10000.0
                acc.spread_n = 1
        due = acc.end + self.allowed_lateness_ns
        if due < self.next_due:
            self.next_due = due

    cdef inline void _price(self, Acc* acc, double v) noexcept:
        if not acc.has_open:
            acc.has_open = True
            acc.open = acc.high = acc.low = v
        else:
            if v > acc.high:
                acc.high = v
            if v < acc.low:
                acc.low = v
        acc.close = v

    cdef void _event(self, int sid, Ev* ev) except *:
        cdef Sym* st = &self.syms[sid]
        cdef Acc* acc
        cdef int k
        cdef long long iv, bucket, ts = ev.ts
        cdef int kind = ev.kind
        cdef double price, size
        if not st.dirty:
            st.dirty = True
            self.dirty[self.ndirty] = sid
            self.ndirty += 1
        if kind == K_VALUE:
            st.index = True
        for k in range(self.niv):
            acc = &self.accs[sid * self.niv + k]
            iv = self.ivs[k]
            if acc.active:
                if ts < acc.start or ts >= acc.end:
                    bucket = ts // iv
                    if bucket < acc.bucket:
                        self.late += 1
                        continue
                    if acc.has_open:
                        self._close(sid, k)  # may append bars; st and acc stay valid (no symbol added)
                        acc.active = True
                    self._open(acc, st, bucket, iv)
            else:
                bucket = ts // iv
                if acc.has_last and bucket <= acc.last_bucket:
                    self.late += 1
                    continue
                acc.active = True
                acc.has_open = False
                self._open(acc, st, bucket, iv)
            if kind == K_QUOTE:
                acc.sb += ev.c
                acc.sa += ev.d
                acc.obs += 1
                if ev.a > 0 and ev.b > 0 and ev.b >= ev.a:
                    acc.ss += (ev.b - ev.a) / ((ev.b + ev.a) / 2) * 10000.0
                    acc.spread_n += 1
            elif kind == K_TRADE:
                price = ev.a
                size = ev.b
                if ev.excl:  # volume only: no price, no trade count, no side
                    acc.vonly += size
                    continue
                self._price(acc, price)
                acc.trades += 1
                acc.vol += size
                acc.pv += price * size
                if not st.has_quote:
                    acc.neutral += size
                else:
                    if st.qask > 0 and price >= st.qask:
                        acc.buy += size
                    elif st.qbid > 0 and price <= st.qbid:
                        acc.sell += size
                    else:
                        acc.neutral += size
                    if st.qbid > 0 and st.qask > 0:
                        acc.covered += 1
            else:
                acc.index = True
                self._price(acc, ev.a)
                acc.trades += 1
        if kind == K_QUOTE:
            st.has_quote = True
            st.qbid = ev.a
            st.qask = ev.b
            st.qbsz = ev.c
            st.qasz = ev.d

    cdef void _close(self, int sid, int k) except *:
        """Close interval ``k``'s open bar of ``sid``: a bar when it has a price (after gap bars with
        ``fill_gaps``), nothing for a quotes-only bucket."""
        cdef Acc* acc = &self.accs[sid * self.niv + k]
        cdef long long iv = self.ivs[k]
        cdef long long b
        acc.active = False
        if not acc.has_open:
            return
        acc.has_open = False
        name = self.names[sid]
        interval = self.iv_names[k]
        if self.fill_gaps and acc.has_last and acc.bucket - acc.last_bucket - 1 > self.max_gap_bars:
            self.gaps_unfilled += 1  # a session break, not a quiet market: bounded, counted, not filled
        elif self.fill_gaps and acc.has_last:
            c = acc.last_close
            for b in range(acc.last_bucket + 1, acc.bucket):
                self.closed.append(MicroBar(sym=name, interval=interval, start_ns=b * iv, open=c, high=c,
                                            low=c, close=c, volume=0.0, trades=0, closed=True, gap_fill=True))
        acc.has_last = True
        acc.last_bucket = acc.bucket
        acc.last_close = acc.close
        self.closed.append(self._bar(sid, k, True))

    cdef object _bar(self, int sid, int k, bint closed):
        cdef Acc* acc = &self.accs[sid * self.niv + k]
        cdef Sym* st = &self.syms[sid]
        cdef double tot
        name = self.names[sid]
        interval = self.iv_names[k]
        vwap = acc.pv / acc.vol if acc.vol > 0 else None
        volume = acc.vol + acc.vonly
        if acc.index or not self.l2:
            return MicroBar(sym=name, interval=interval, start_ns=acc.bucket * self.ivs[k], open=acc.open,
                            high=acc.high, low=acc.low, close=acc.close, volume=volume, trades=acc.trades,
                            vwap=None if acc.index else vwap, closed=closed)
        tot = acc.sb + acc.sa
        bsz = st.qbsz if st.has_quote else None
        asz = st.qasz if st.has_quote else None
        return MicroBar(
            sym=name, interval=interval, start_ns=acc.bucket * self.ivs[k], open=acc.open, high=acc.high,
            low=acc.low, close=acc.close, volume=volume, trades=acc.trades, vwap=vwap,
            buy_volume=acc.buy, sell_volume=acc.sell, neutral_volume=acc.neutral + acc.vonly,
            delta_volume=acc.buy - acc.sell,
            bid_ask_imbalance=(acc.sb - acc.sa) / tot if acc.obs and tot > 0 else None,
            ask_bid_size_ratio=asz / bsz if bsz else None,
            quote_coverage_pct=100.0 * acc.covered / acc.trades if acc.trades else None,
            avg_spread_bps=acc.ss / acc.spread_n if acc.spread_n else None,
            bid_size_at_close=bsz, ask_size_at_close=asz, closed=closed,
        )

    def advance(self, long long watermark_ns):
        """Close every bar whose end plus the allowed lateness is at or before ``watermark_ns``."""
        cdef long long limit, next_due, end, lateness = self.allowed_lateness_ns
        cdef Py_ssize_t i
        cdef int k
        cdef Acc* acc
        if watermark_ns > self.watermark:
            self.watermark = watermark_ns
        if self.watermark < self.next_due:
            return
        limit = self.watermark - lateness
        next_due = NO_DUE
        for i in range(self.nsyms):
            for k in range(self.niv):
                acc = &self.accs[i * self.niv + k]
                if not acc.active:
                    continue
                end = acc.end
                if end <= limit:
                    self._close(<int>i, k)
                elif end + lateness < next_due:
                    next_due = end + lateness
        self.next_due = next_due

    def drain(self):
        """Closed bars since the last call, in closing order."""
        out = self.closed
        self.closed = []
        return out

    def current(self, sym, interval):
        """The in-progress bar of ``sym`` (closed=False), or None."""
        cdef Py_ssize_t i = self.ids.get(sym, -1)
        cdef int k
        cdef Acc* acc
        if i < 0:
            return None
        for k in range(self.niv):
            if self.iv_names[k] == interval:
                acc = &self.accs[i * self.niv + k]
                if acc.active and acc.has_open:
                    return self._bar(<int>i, k, False)
                return None
        return None

    def flush(self):
        """Close every open bar (end of an offline run) and return all closed bars."""
        cdef Py_ssize_t i
        cdef int k
        for i in range(self.nsyms):
            for k in range(self.niv):
                if self.accs[i * self.niv + k].active:
                    self._close(<int>i, k)
        return self.drain()

    # ------------------------------------------------------------------------------------ objects in

    def on_events(self, events):
        """Aggregate msgspec tick events in stream order (offline paths, tests): encoded in chunks and fed,
        so they take exactly the live path. Events msgspec would refuse raise ValueError."""
        it = iter(events)
        while True:
            chunk = list(itertools.islice(it, 4096))
            if not chunk:
                return
            self._feed_events(chunk)

    def on_event(self, ev):
        self._feed_events([ev])

    cdef _feed_events(self, list chunk):
        global _EVENTS_DECODER
        body = _ENCODER.encode(chunk)
        if self._feed(body, 0) >= 0:
            return
        if _EVENTS_DECODER is None:
            from spx_common.models import MarketEvent
            _EVENTS_DECODER = msgspec.msgpack.Decoder(list[MarketEvent])
        try:
            events = _EVENTS_DECODER.decode(body)
        except msgspec.ValidationError as exc:
            raise ValueError(f"tick events not valid: {exc}") from None
        if self._feed(_ENCODER.encode(events), 0) < 0:
            raise ValueError(f"tick events not accepted: an event time at or beyond {MAX_TS} (2116-02-20)")
