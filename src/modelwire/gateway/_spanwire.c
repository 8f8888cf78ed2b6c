/* A span as a ScopeSpans.spans field (2) in OTLP protobuf: the compiled twin of otlp._span, byte
 * for byte the same (tests/test_spanwire.py compares them). Field numbers are those of
 * opentelemetry-proto's trace.proto and common.proto (v1). Every field number used is under 16, so
 * a tag is one byte: (number << 3) | wire type. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A growable buffer, on the stack until a span outgrows it (few do). */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
    char small[1024];
} Buf;

static int grow(Buf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2 > b->len + more ? b->cap * 2 : b->len + more;
    char *p;
    if (b->data == b->small) {
        p = PyMem_Malloc(cap);
        if (p != NULL)
            memcpy(p, b->small, b->len);
    }
    else {
        p = PyMem_Realloc(b->data, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int varint_size(uint64_t n)
{
    int size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

/* Writes n's varint at p (room for it checked by the caller). */
static char *write_varint(char *p, uint64_t n)
{
    while (n >= 0x80) {
        *p++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (char)n;
    return p;
}

static int put(Buf *b, const char *src, Py_ssize_t n)
{
    if (grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int put_varint(Buf *b, uint8_t tag, uint64_t n)
{
    if (grow(b, 11) < 0)
        return -1;
    b->data[b->len] = (char)tag;
    b->len = write_varint(b->data + b->len + 1, n) - b->data;
    return 0;
}

static int put_fixed64(Buf *b, uint8_t tag, uint64_t n)
{
    if (grow(b, 9) < 0)
        return -1;
    char *p = b->data + b->len;
    *p++ = (char)tag;
    for (int i = 0; i < 8; i++)
        *p++ = (char)(n >> (8 * i)); /* little-endian whatever the machine */
    b->len += 9;
    return 0;
}

/* A length-delimited field whose payload is known. */
static int put_field(Buf *b, uint8_t tag, const char *payload, Py_ssize_t n)
{
    if (grow(b, 11 + n) < 0)
        return -1;
    b->data[b->len] = (char)tag;
    char *p = write_varint(b->data + b->len + 1, (uint64_t)n);
    memcpy(p, payload, n);
    b->len = p + n - b->data;
    return 0;
}

/* Makes what was written since `start` the payload of a length-delimited field: its size is only
 * known now, so the payload moves up by the tag and size (a few bytes; nested fields are small). */
static int close_field(Buf *b, Py_ssize_t start, uint8_t tag)
{
    Py_ssize_t size = b->len - start;
    int head = 1 + varint_size((uint64_t)size);
    if (grow(b, head) < 0)
        return -1;
    memmove(b->data + start + head, b->data + start, size);
    b->data[start] = (char)tag;
    write_varint(b->data + start + 1, (uint64_t)size);
    b->len += head;
    return 0;
}

/* A str as a field, UTF-8 (str.encode(): a lone surrogate raises UnicodeEncodeError). */
static int put_str(Buf *b, uint8_t tag, PyObject *text)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (utf8 == NULL)
        return -1;
    return put_field(b, tag, utf8, n);
}

static int put_text(Buf *b, uint8_t tag, PyObject *text, const char *what)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(text)->tp_name);
        return -1;
    }
    return put_str(b, tag, text);
}

/* An AnyValue's payload, as otlp._value writes it: isinstance checks in its order (bool before int). */
static int put_value(Buf *b, PyObject *value)
{
    if (PyUnicode_Check(value))
        return put_str(b, 0x0A, value); /* string_value 1 */
    if (PyBool_Check(value))
        return put(b, value == Py_True ? "\x10\x01" : "\x10\x00", 2); /* bool_value 2 */
    if (PyLong_Check(value)) {
        /* int_value 3, int64: the low 64 bits of the two's complement, as value & 0xFFFF... */
        uint64_t n = PyLong_AsUnsignedLongLongMask(value);
        if (n == (uint64_t)-1 && PyErr_Occurred())
            return -1;
        return put_varint(b, 0x18, n);
    }
    if (PyFloat_Check(value)) { /* double_value 4, fixed64 */
        if (grow(b, 9) < 0)
            return -1;
        b->data[b->len] = 0x21;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), b->data + b->len + 1, 1) < 0)
            return -1;
        b->len += 9;
        return 0;
    }
    if (PyList_Check(value) || PyTuple_Check(value)) {
        /* array_value 5: an ArrayValue of values (1). A list may nest itself: RecursionError. */
        Py_ssize_t array = b->len;
        if (Py_EnterRecursiveCall(" while encoding a span attribute"))
            return -1;
        int failed = 0;
        /* the size read each time round and the item held: str() of an item may change a list */
        for (Py_ssize_t i = 0; !failed && i < PySequence_Fast_GET_SIZE(value); i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(value, i);
            Py_ssize_t start = b->len;
            Py_INCREF(item);
            failed = put_value(b, item) < 0 || close_field(b, start, 0x0A) < 0;
            Py_DECREF(item);
        }
        Py_LeaveRecursiveCall();
        return failed ? -1 : close_field(b, array, 0x2A);
    }
    PyObject *text = PyObject_Str(value); /* anything else: as str() writes it */
    if (text == NULL)
        return -1;
    int result = put_str(b, 0x0A, text);
    Py_DECREF(text);
    return result;
}

/* The two items of a (key, value) or (time, name) pair, borrowed from `item`, or -1 and an error
 * as unpacking it in Python would raise. */
static int unpack(PyObject *item, PyObject **first, PyObject **second)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        *first = PyTuple_GET_ITEM(item, 0);
        *second = PyTuple_GET_ITEM(item, 1);
        return 0;
    }
    if (!PyTuple_Check(item) && !PyList_Check(item)) {
        PyErr_Format(PyExc_TypeError, "expected a pair, not %.100s", Py_TYPE(item)->tp_name);
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(item) != 2) {
        PyErr_Format(PyExc_ValueError, "expected a pair, not %zd items", PySequence_Fast_GET_SIZE(item));
        return -1;
    }
    *first = PySequence_Fast_GET_ITEM(item, 0);
    *second = PySequence_Fast_GET_ITEM(item, 1);
    return 0;
}

/* A span's own attributes: KeyValue fields (9) {key 1, value 2}; a None value is left out. */
static int put_pair(Buf *b, PyObject *key, PyObject *value)
{
    if (value == Py_None)
        return 0;
    Py_ssize_t pair = b->len;
    if (put_text(b, 0x0A, key, "attribute key") < 0)
        return -1;
    Py_ssize_t start = b->len;
    if (put_value(b, value) < 0 || close_field(b, start, 0x12) < 0)
        return -1;
    return close_field(b, pair, 0x4A);
}

/* An event (11): time_unix_nano 1 (fixed64), name 2. */
static int put_event(Buf *b, PyObject *at, PyObject *name)
{
    uint64_t time = PyLong_AsUnsignedLongLong(at);
    if (time == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    Py_ssize_t start = b->len;
    if (put_fixed64(b, 0x09, time) < 0 || put_text(b, 0x12, name, "event name") < 0)
        return -1;
    return close_field(b, start, 0x5A);
}

/* Calls each(b, first, second) for every pair of a sequence (any iterable: it is listed first). */
static int put_each(Buf *b, PyObject *items, int (*each)(Buf *, PyObject *, PyObject *), const char *what)
{
    PyObject *seq = PySequence_Fast(items, what);
    if (seq == NULL)
        return -1;
    int failed = 0;
    for (Py_ssize_t i = 0; !failed && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i), *first, *second;
        /* all held while written: a value's str() may change the list that holds it, or its pair */
        Py_INCREF(item);
        failed = unpack(item, &first, &second) < 0;
        if (!failed) {
            Py_INCREF(first);
            Py_INCREF(second);
            failed = each(b, first, second) < 0;
            Py_DECREF(first);
            Py_DECREF(second);
        }
        Py_DECREF(item);
    }
    Py_DECREF(seq);
    return failed ? -1 : 0;
}

/* An id as struct's "16s" / "8s" packs it: bytes or bytearray, cut or padded with zeros to size. */
static int put_id(Buf *b, uint8_t tag, PyObject *id, Py_ssize_t size)
{
    const char *p;
    Py_ssize_t n;
    if (PyBytes_Check(id)) {
        p = PyBytes_AS_STRING(id);
        n = PyBytes_GET_SIZE(id);
    }
    else if (PyByteArray_Check(id)) {
        p = PyByteArray_AS_STRING(id);
        n = PyByteArray_GET_SIZE(id);
    }
    else {
        PyErr_Format(PyExc_TypeError, "a span or trace id must be bytes, not %.100s", Py_TYPE(id)->tp_name);
        return -1;
    }
    if (grow(b, 2 + size) < 0)
        return -1;
    char *at = b->data + b->len;
    at[0] = (char)tag;
    at[1] = (char)size;
    memcpy(at + 2, p, n < size ? n : size);
    if (n < size)
        memset(at + 2 + n, 0, size - n);
    b->len += 2 + size;
    return 0;
}

static int put_time(Buf *b, uint8_t tag, PyObject *time)
{
    uint64_t n = PyLong_AsUnsignedLongLong(time); /* TypeError, or OverflowError out of range */
    if (n == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    return put_fixed64(b, tag, n);
}

/* The span's body after room for its own head (tag and size), written last in front of it. */
enum { HEAD = 11 };

static int put_span(Buf *b, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *trace_state = args[1], *parent_id = args[3];
    int has_parent = PyObject_IsTrue(parent_id);
    if (has_parent < 0 || put_id(b, 0x0A, args[0], 16) < 0 || put_id(b, 0x12, args[2], 8) < 0)
        return -1;
    if (has_parent && put_id(b, 0x22, parent_id, 8) < 0)
        return -1;
    if (put_time(b, 0x39, args[4]) < 0 || put_time(b, 0x41, args[5]) < 0)
        return -1;
    Py_buffer fixed; /* name, kind, status and shared attributes, encoded already */
    if (PyObject_GetBuffer(args[6], &fixed, PyBUF_SIMPLE) < 0)
        return -1;
    int failed = put(b, fixed.buf, fixed.len);
    PyBuffer_Release(&fixed);
    if (failed < 0)
        return -1;
    if (nargs > 7) {
        int any = PyObject_IsTrue(args[7]);
        if (any < 0 || (any && put_each(b, args[7], put_pair, "pairs must be iterable") < 0))
            return -1;
    }
    int has_state = PyObject_IsTrue(trace_state);
    if (has_state < 0 || (has_state && put_text(b, 0x1A, trace_state, "trace_state") < 0))
        return -1;
    if (nargs > 8 && put_each(b, args[8], put_event, "events must be iterable") < 0)
        return -1;
    return 0;
}

static PyObject *span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 7 || nargs > 9) {
        PyErr_Format(PyExc_TypeError, "span() takes from 7 to 9 positional arguments but %zd were given",
                     nargs);
        return NULL;
    }
    Buf b;
    b.data = b.small;
    b.cap = sizeof b.small;
    b.len = HEAD;
    PyObject *out = NULL;
    if (put_span(&b, args, nargs) == 0) {
        /* ScopeSpans.spans (2): its tag and size end where the body starts, so nothing moves */
        uint64_t size = (uint64_t)(b.len - HEAD);
        int head = 1 + varint_size(size);
        char *at = b.data + HEAD - head;
        at[0] = 0x12;
        write_varint(at + 1, size);
        out = PyBytes_FromStringAndSize(at, b.len - HEAD + head);
    }
    if (b.data != b.small)
        PyMem_Free(b.data);
    return out;
}

static PyMethodDef methods[] = {
    {"span", (PyCFunction)(void (*)(void))span, METH_FASTCALL,
     "span(trace_id, trace_state, span_id, parent_id, start, end, fixed, pairs=(), events=())\n--\n\n"
     "A span as a ScopeSpans.spans field, the bytes otlp._span writes."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "modelwire.gateway._spanwire",
    .m_doc = "OTLP spans written in C: the compiled twin of modelwire.gateway.otlp._span.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__spanwire(void)
{
    return PyModuleDef_Init(&module);
}
