/* Byte-pair encoding over a compact vocabulary: modelwire's token counter.
 *
 * A Vocabulary is built from a .tiktoken file (one "base64(token) rank" line per token, ranks 0..n-1
 * in order) and holds every token's bytes in one block, an offset per rank and an open-addressing
 * table from bytes to rank: ~4.5 MiB for o200k_base, where tiktoken's core holds ~40 MiB (three
 * copies of the vocabulary as separately allocated vectors). Text arrives already split into
 * pieces by the encoding's pattern (the caller's regex); each piece is merged by tiktoken's rule
 * (tests/test_tokens.py compares the ids with tiktoken's own on a corpus and on random text). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NO_RANK UINT32_MAX
#define SMALL_PIECE 64 /* pieces up to this many bytes merge in stack arrays */

typedef struct {
    PyObject_HEAD
    uint8_t *bytes;   /* every token's bytes, in rank order */
    uint32_t *starts; /* size + 1 offsets into bytes: token r is bytes[starts[r]:starts[r + 1]] */
    /* By hash of a token's bytes: 0 for an empty slot, else the hash's high bits (the tag) over
       rank + 1 in the low bits. A probe whose tag differs moves on without reading the token, so
       the table can be three-quarters full (1 MiB for o200k where half full took 2). */
    uint32_t *slots;
    uint32_t mask;      /* the number of slots - 1 (a power of two, at least 5/4 of size) */
    uint32_t rank_mask; /* the low bits of a slot that hold rank + 1 */
    uint32_t size;
} Vocabulary;

/* FNV-1a, with the high bits folded in before the mask takes the low ones. */
static uint32_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static uint32_t rank_of(const Vocabulary *v, const uint8_t *p, size_t n)
{
    uint32_t h = hash_bytes(p, n), tag = h & ~v->rank_mask;
    for (uint32_t i = h & v->mask, step = 1;; i = (i + step++) & v->mask) {
        uint32_t slot = v->slots[i];
        if (slot == 0)
            return NO_RANK;
        if ((slot & ~v->rank_mask) != tag)
            continue;
        uint32_t r = (slot & v->rank_mask) - 1;
        if (v->starts[r + 1] - v->starts[r] == n && memcmp(v->bytes + v->starts[r], p, n) == 0)
            return r;
    }
}

/* ------------------------------------------------------------------------------------- loading */

static int8_t base64_value[256];

static void init_base64(void)
{
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(base64_value, -1, sizeof base64_value);
    for (int i = 0; i < 64; i++)
        base64_value[(uint8_t)alphabet[i]] = (int8_t)i;
}

/* Decodes the padded base64 in [p, end) to out; returns the bytes written, or -1 if malformed. */
static Py_ssize_t decode_base64(const uint8_t *p, const uint8_t *end, uint8_t *out)
{
    Py_ssize_t n = end - p, written = 0;
    if (n == 0 || n % 4 != 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i += 4) {
        int pad = (p[i + 3] == '=') + (p[i + 2] == '=' && p[i + 3] == '=');
        if (pad && i + 4 != n)
            return -1;
        int a = base64_value[p[i]], b = base64_value[p[i + 1]];
        int c = pad >= 2 ? 0 : base64_value[p[i + 2]], d = pad >= 1 ? 0 : base64_value[p[i + 3]];
        if ((a | b | c | d) < 0)
            return -1;
        uint32_t triple = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | (uint32_t)d;
        out[written++] = (uint8_t)(triple >> 16);
        if (pad < 2)
            out[written++] = (uint8_t)(triple >> 8);
        if (pad < 1)
            out[written++] = (uint8_t)triple;
    }
    return written;
}

static int load_error(const char *what, Py_ssize_t line)
{
    PyErr_Format(PyExc_ValueError, "not a BPE vocabulary: %s on line %zd", what, line + 1);
    return -1;
}

/* Fills v from the file's text; -1 with an exception set when it is not a vocabulary. */
static int load(Vocabulary *v, const uint8_t *data, Py_ssize_t n)
{
    Py_ssize_t lines = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        lines += data[i] == '\n';
    lines += n > 0 && data[n - 1] != '\n';
    if (lines >= (Py_ssize_t)(UINT32_MAX / 4) || n >= (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a BPE vocabulary: too large");
        return -1;
    }
    uint32_t slots = 1024, count = (uint32_t)lines;
    while (slots < count + count / 4)
        slots *= 2;
    v->rank_mask = 1;
    while (v->rank_mask <= count) /* every rank + 1 fits */
        v->rank_mask = v->rank_mask * 2 + 1;
    v->bytes = PyMem_Malloc(n > 0 ? (size_t)n : 1); /* decoded tokens are shorter than their lines */
    v->starts = PyMem_Malloc(((size_t)lines + 1) * sizeof(uint32_t));
    v->slots = PyMem_Calloc(slots, sizeof(uint32_t));
    if (v->bytes == NULL || v->starts == NULL || v->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    v->mask = slots - 1;
    uint32_t size = 0, used = 0;
    const uint8_t *p = data, *end = data + n;
    for (Py_ssize_t line = 0; p < end; line++) {
        const uint8_t *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        const uint8_t *stop = eol > p && eol[-1] == '\r' ? eol - 1 : eol, *next = eol < end ? eol + 1 : end;
        if (stop == p) { /* a blank line */
            p = next;
            continue;
        }
        const uint8_t *space = memchr(p, ' ', (size_t)(stop - p));
        if (space == NULL)
            return load_error("no space between token and rank", line);
        Py_ssize_t len = decode_base64(p, space, v->bytes + used);
        if (len < 0)
            return load_error("the token is not base64", line);
        uint64_t rank = 0;
        if (space + 1 == stop)
            return load_error("no rank", line);
        for (const uint8_t *q = space + 1; q < stop; q++) {
            if (*q < '0' || *q > '9' || rank > UINT32_MAX)
                return load_error("the rank is not a number", line);
            rank = rank * 10 + (uint64_t)(*q - '0');
        }
        if (rank != size)
            return load_error("ranks are not 0, 1, 2... in order", line);
        v->starts[size] = used;
        v->starts[size + 1] = used + (uint32_t)len;
        if (rank_of(v, v->bytes + used, (size_t)len) != NO_RANK)
            return load_error("a token listed twice", line);
        uint32_t h = hash_bytes(v->bytes + used, (size_t)len), i = h & v->mask;
        for (uint32_t step = 1; v->slots[i] != 0; step++)
            i = (i + step) & v->mask;
        v->slots[i] = (h & ~v->rank_mask) | (size + 1);
        used += (uint32_t)len;
        size++;
        p = next;
    }
    v->size = size;
    for (int b = 0; b < 256; b++) { /* merging starts from single bytes: each must be a token */
        uint8_t byte = (uint8_t)b;
        if (rank_of(v, &byte, 1) == NO_RANK) {
            PyErr_Format(PyExc_ValueError, "not a BPE vocabulary: byte %d is not a token", b);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------- merging */

/* A piece's parts, as a list linked over byte positions: a part is named by its first byte and the
 * piece's length ends the list. pair[i] is the rank of part i joined with the part after it. Pairs
 * wait in a min-heap keyed by (rank, position), so the lowest rank is joined first and the leftmost
 * of equals, as tiktoken does. An entry whose part has changed since it was pushed is skipped: a
 * part only grows, so its new pair is never the token of an old entry. */
typedef struct {
    uint32_t *next, *prev, *pair;
    uint64_t *heap; /* room for 3 entries per byte: one each at first, then two per join */
    size_t heap_len;
} Parts;

typedef struct {
    uint32_t next[SMALL_PIECE], prev[SMALL_PIECE], pair[SMALL_PIECE];
    uint64_t heap[3 * SMALL_PIECE];
} SmallParts;

static void heap_push(Parts *s, uint32_t rank, uint32_t at)
{
    uint64_t key = ((uint64_t)rank << 32) | at;
    size_t i = s->heap_len++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (s->heap[up] <= key)
            break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = key;
}

static uint64_t heap_pop(Parts *s)
{
    uint64_t top = s->heap[0], last = s->heap[--s->heap_len];
    size_t i = 0, n = s->heap_len;
    if (n == 0)
        return top;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && s->heap[child + 1] < s->heap[child])
            child++;
        if (s->heap[child] >= last)
            break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    s->heap[i] = last;
    return top;
}

static void set_pair(const Vocabulary *v, const uint8_t *piece, uint32_t len, Parts *s, uint32_t i)
{
    uint32_t j = s->next[i];
    s->pair[i] = j < len ? rank_of(v, piece + i, s->next[j] - i) : NO_RANK;
    if (s->pair[i] != NO_RANK)
        heap_push(s, s->pair[i], i);
}

/* Joins piece[0:len] (len >= 2) into tokens; returns how many, and leaves them linked from 0. */
static uint32_t merge(const Vocabulary *v, const uint8_t *piece, uint32_t len, Parts *s)
{
    s->heap_len = 0;
    for (uint32_t i = 0; i < len; i++) {
        s->next[i] = i + 1;
        s->prev[i] = i - 1;
    }
    for (uint32_t i = 0; i < len; i++)
        set_pair(v, piece, len, s, i);
    uint32_t parts = len;
    while (s->heap_len > 0) {
        uint64_t key = heap_pop(s);
        uint32_t i = (uint32_t)key;
        if (s->pair[i] != (uint32_t)(key >> 32))
            continue;
        uint32_t gone = s->next[i], after = s->next[gone];
        s->next[i] = after;
        if (after < len)
            s->prev[after] = i;
        s->pair[gone] = NO_RANK;
        parts--;
        set_pair(v, piece, len, s, i);
        if (i > 0)
            set_pair(v, piece, len, s, s->prev[i]);
    }
    return parts;
}

/* Parts for a piece of len bytes: small ones in *small, larger ones from malloc (safe without the
 * GIL). 0, or -1 when memory ran out. */
static int open_parts(Parts *s, SmallParts *small, uint32_t len)
{
    if (len <= SMALL_PIECE) {
        *s = (Parts){small->next, small->prev, small->pair, small->heap, 0};
        return 0;
    }
    uint32_t *links = malloc((size_t)len * 3 * sizeof(uint32_t));
    uint64_t *heap = malloc((size_t)len * 3 * sizeof(uint64_t));
    if (links == NULL || heap == NULL) {
        free(links);
        free(heap);
        return -1;
    }
    *s = (Parts){links, links + len, links + 2 * (size_t)len, heap, 0};
    return 0;
}

static void close_parts(Parts *s, uint32_t len)
{
    if (len > SMALL_PIECE) {
        free(s->next);
        free(s->heap);
    }
}

/* ---------------------------------------------------------------------------------- the type */

typedef struct {
    const uint8_t *data;
    uint32_t len;
} Piece;

/* The UTF-8 of each str (or the bytes) in pieces, a tuple that keeps them alive; NULL with an
 * exception set (UnicodeEncodeError for a lone surrogate: the caller replaces them and retries). */
static Piece *utf8_pieces(PyObject *pieces)
{
    Py_ssize_t n = PyTuple_GET_SIZE(pieces);
    Piece *out = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(Piece));
    if (out == NULL)
        return (Piece *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(pieces, i);
        const char *data;
        Py_ssize_t len;
        if (PyUnicode_Check(item))
            data = PyUnicode_AsUTF8AndSize(item, &len);
        else if (PyBytes_Check(item))
            data = PyBytes_AsString(item), len = PyBytes_GET_SIZE(item);
        else
            data = NULL, PyErr_Format(PyExc_TypeError, "pieces are str or bytes, not %.100s",
                                      Py_TYPE(item)->tp_name);
        if (data != NULL && len >= (Py_ssize_t)UINT32_MAX / 4)
            data = NULL, PyErr_SetString(PyExc_ValueError, "a piece of text over 1 GiB");
        if (data == NULL) {
            PyMem_Free(out);
            return NULL;
        }
        out[i] = (Piece){(const uint8_t *)data, (uint32_t)len};
    }
    return out;
}

/* Tokens in all pieces together; -1 when memory ran out. Runs without the GIL. */
static Py_ssize_t count_pieces(const Vocabulary *v, const Piece *pieces, Py_ssize_t n)
{
    SmallParts small;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Piece *piece = &pieces[i];
        if (piece->len == 0)
            continue;
        if (rank_of(v, piece->data, piece->len) != NO_RANK) { /* every single byte is a token */
            total++;
            continue;
        }
        Parts s;
        if (open_parts(&s, &small, piece->len) < 0)
            return -1;
        total += merge(v, piece->data, piece->len, &s);
        close_parts(&s, piece->len);
    }
    return total;
}

static PyObject *Vocabulary_count(Vocabulary *self, PyObject *arg)
{
    PyObject *pieces = PySequence_Tuple(arg);
    if (pieces == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(pieces), total;
    Piece *utf8 = utf8_pieces(pieces);
    if (utf8 == NULL) {
        Py_DECREF(pieces);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    total = count_pieces(self, utf8, n);
    Py_END_ALLOW_THREADS
    PyMem_Free(utf8);
    Py_DECREF(pieces);
    return total < 0 ? PyErr_NoMemory() : PyLong_FromSsize_t(total);
}

static int append_rank(PyObject *ids, uint32_t rank)
{
    PyObject *id = PyLong_FromUnsignedLong(rank);
    int failed = id == NULL || PyList_Append(ids, id) < 0;
    Py_XDECREF(id);
    return failed ? -1 : 0;
}

/* The ids of one piece's tokens, appended to ids; -1 with an exception set. */
static int encode_piece(const Vocabulary *v, const Piece *piece, PyObject *ids)
{
    if (piece->len == 0)
        return 0;
    uint32_t whole = rank_of(v, piece->data, piece->len);
    if (whole != NO_RANK)
        return append_rank(ids, whole);
    SmallParts small;
    Parts s;
    if (open_parts(&s, &small, piece->len) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    merge(v, piece->data, piece->len, &s);
    int failed = 0;
    for (uint32_t i = 0; i < piece->len && !failed; i = s.next[i])
        failed = append_rank(ids, rank_of(v, piece->data + i, s.next[i] - i)) < 0;
    close_parts(&s, piece->len);
    return failed ? -1 : 0;
}

static PyObject *Vocabulary_encode(Vocabulary *self, PyObject *arg)
{
    PyObject *pieces = PySequence_Tuple(arg);
    if (pieces == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(pieces);
    Piece *utf8 = utf8_pieces(pieces);
    PyObject *ids = utf8 == NULL ? NULL : PyList_New(0);
    for (Py_ssize_t i = 0; ids != NULL && i < n; i++) {
        if (encode_piece(self, &utf8[i], ids) < 0)
            Py_CLEAR(ids);
    }
    PyMem_Free(utf8);
    Py_DECREF(pieces);
    return ids;
}

/* The rank an id names, or NO_RANK with KeyError (or the int conversion's error) set. */
static uint32_t checked_rank(const Vocabulary *v, PyObject *id)
{
    long long rank = PyLong_AsLongLong(id);
    if (rank == -1 && PyErr_Occurred())
        return NO_RANK;
    if (rank < 0 || rank >= v->size) {
        PyErr_SetObject(PyExc_KeyError, id);
        return NO_RANK;
    }
    return (uint32_t)rank;
}

static PyObject *Vocabulary_decode(Vocabulary *self, PyObject *arg)
{
    PyObject *ids = PySequence_Fast(arg, "ids must be a sequence of ints");
    if (ids == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ids), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(ids);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t rank = checked_rank(self, items[i]);
        if (rank == NO_RANK) {
            Py_DECREF(ids);
            return NULL;
        }
        total += self->starts[rank + 1] - self->starts[rank];
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t rank = (uint32_t)PyLong_AsLongLong(items[i]);
            uint32_t len = self->starts[rank + 1] - self->starts[rank];
            memcpy(p, self->bytes + self->starts[rank], len);
            p += len;
        }
    }
    Py_DECREF(ids);
    return out;
}

static PyObject *Vocabulary_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"data", NULL};
    Py_buffer data;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:Vocabulary", keywords, &data))
        return NULL;
    Vocabulary *self = (Vocabulary *)type->tp_alloc(type, 0);
    if (self != NULL && load(self, data.buf, data.len) < 0)
        Py_CLEAR(self);
    if (self != NULL) { /* the block was sized for the file; the tokens take less than half */
        uint8_t *fitted = PyMem_Realloc(self->bytes, self->starts[self->size] + 1);
        self->bytes = fitted != NULL ? fitted : self->bytes;
    }
    PyBuffer_Release(&data);
    return (PyObject *)self;
}

static void Vocabulary_dealloc(Vocabulary *self)
{
    PyMem_Free(self->bytes);
    PyMem_Free(self->starts);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t Vocabulary_len(Vocabulary *self)
{
    return self->size;
}

static PyObject *Vocabulary_nbytes(Vocabulary *self, void *closure)
{
    size_t n = (size_t)self->starts[self->size] + 1 + ((size_t)self->size + 1) * sizeof(uint32_t) +
               ((size_t)self->mask + 1) * sizeof(uint32_t);
    return PyLong_FromSize_t(n);
}

static PyMethodDef Vocabulary_methods[] = {
    {"count", (PyCFunction)Vocabulary_count, METH_O,
     "count(pieces) -> int: the tokens in these pieces of text (str or bytes), all together."},
    {"encode", (PyCFunction)Vocabulary_encode, METH_O,
     "encode(pieces) -> list[int]: the token ids of these pieces of text, in order."},
    {"decode", (PyCFunction)Vocabulary_decode, METH_O,
     "decode(ids) -> bytes: the bytes of these token ids; KeyError for an id it does not have."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Vocabulary_getset[] = {
    {"nbytes", (getter)Vocabulary_nbytes, NULL, "the memory its tables hold", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Vocabulary_sequence = {.sq_length = (lenfunc)Vocabulary_len};

static PyTypeObject VocabularyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "modelwire._bpe.Vocabulary",
    .tp_doc = "Vocabulary(data): the tokens of a .tiktoken file, and byte-pair encoding with them.",
    .tp_basicsize = sizeof(Vocabulary),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Vocabulary_new,
    .tp_dealloc = (destructor)Vocabulary_dealloc,
    .tp_methods = Vocabulary_methods,
    .tp_getset = Vocabulary_getset,
    .tp_as_sequence = &Vocabulary_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "modelwire._bpe",
    .m_doc = "Byte-pair encoding over a compact vocabulary (modelwire.tokens builds on it).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__bpe(void)
{
    init_base64();
    if (PyType_Ready(&VocabularyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Vocabulary", (PyObject *)&VocabularyType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
