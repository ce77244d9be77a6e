/*
 * pgsource/decode/_jsonvalue.h: one column value's text -> its JSON, as row_to_json writes it.
 *
 * Shared by the two C decoders that turn PostgreSQL's text output into JSON: _rowjson.c
 * (CDC: pgoutput TupleData) and _copyjson.c (polling: COPY text). Both see the same text
 * forms (the type's output function in pgsource's session settings), so one set of writers
 * keeps the two modes byte-identical. Static functions only: each extension gets its own copy.
 *
 * Every writer returns 0 (written), 1 (not a plain value: the caller falls back to the
 * column's Python converter, or gives up) or -1 (an error is set).
 */
#ifndef PGSOURCE_JSONVALUE_H
#define PGSOURCE_JSONVALUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Column kinds; the names are those of rowjson._kind (each constructor maps them). */
enum kind {
    K_RAW,         /* int, json, jsonb: the text as is */
    K_NUMBER,      /* numeric, float: as is, or quoted when it ends in a letter (NaN, Infinity) */
    K_BOOL,        /* "t"/"f" -> true/false */
    K_QUOTED,      /* date, uuid: '"' + text + '"' (nothing to escape in their output) */
    K_TEXT,        /* everything else: a JSON string, escaped as json's c_encode_basestring */
    K_TIMESTAMPTZ, /* the ISO text rewritten inline, else the Python converter */
    K_TIMESTAMP,
    K_CALL,        /* the Python ValueDecoder, called with the text as str */
    K_BYTEA,       /* bytea text (hex or escape) -> its base64 as a JSON string (COPY only) */
};

/* ------------------------------------------------------------------ output buffer */

/* The payload is built in a stack buffer (enough for typical rows) that moves to the heap
 * when it would overflow; the bytes object is made once, at the end. A writer may instead
 * write straight into a bytes object of its own (`bytes`, see writer_init_bytes), which is
 * then handed out without a copy. */
typedef struct {
    char *data;
    Py_ssize_t size, capacity;
    int on_heap;
    PyObject *bytes; /* NULL, or the bytes object `data` lies in (refcount 1, not yet shared) */
    char stack[2048];
} Writer;

static void
writer_init(Writer *w)
{
    w->data = w->stack;
    w->size = 0;
    w->capacity = (Py_ssize_t)sizeof(w->stack);
    w->on_heap = 0;
    w->bytes = NULL;
}

static void
writer_free(Writer *w)
{
    if (w->on_heap)
        PyMem_Free(w->data);
    Py_CLEAR(w->bytes);
}

/* Room for `more` bytes after the current size; -1 with MemoryError set. */
static int
writer_reserve(Writer *w, Py_ssize_t more)
{
    if (more <= w->capacity - w->size)
        return 0;
    if (more > PY_SSIZE_T_MAX / 2 - w->size) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = w->size + more; /* > capacity, and <= PY_SSIZE_T_MAX / 2: doubling cannot overflow */
    Py_ssize_t capacity = need > w->capacity * 2 ? need : w->capacity * 2;
    char *data;
    if (w->bytes != NULL) {
        if (_PyBytes_Resize(&w->bytes, capacity) < 0) { /* frees the object and sets bytes to NULL */
            w->data = w->stack, w->size = 0, w->capacity = (Py_ssize_t)sizeof(w->stack);
            return -1;
        }
        w->data = PyBytes_AS_STRING(w->bytes);
        w->capacity = capacity;
        return 0;
    }
    if (w->on_heap) {
        data = PyMem_Realloc(w->data, (size_t)capacity);
    }
    else {
        data = PyMem_Malloc((size_t)capacity);
        if (data != NULL)
            memcpy(data, w->data, (size_t)w->size);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->data = data;
    w->capacity = capacity;
    w->on_heap = 1;
    return 0;
}

static int
writer_put(Writer *w, const char *s, Py_ssize_t n)
{
    if (writer_reserve(w, n) < 0)
        return -1;
    memcpy(w->data + w->size, s, (size_t)n);
    w->size += n;
    return 0;
}

/* ------------------------------------------------------------------ UTF-8 and escaping */

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t
load8(const unsigned char *s)
{
    uint64_t word;
    memcpy(&word, s, 8);
    return word;
}

/* Nonzero when some byte of the word is 0 (exact as a yes/no; the classic bit trick). */
static inline uint64_t
has_zero(uint64_t word)
{
    return (word - ONES) & ~word & HIGHS;
}

/* Nonzero when some byte needs attention in a JSON string: < 0x20, '"', '\\' or >= 0x80. */
static inline uint64_t
has_special(uint64_t word)
{
    uint64_t below_space = (word - ONES * 0x20) & ~word & HIGHS; /* exact for thresholds <= 0x80 */
    return below_space | has_zero(word ^ (ONES * '"')) | has_zero(word ^ (ONES * '\\')) | (word & HIGHS);
}

/* Length of the valid multi-byte UTF-8 sequence at s (s[0] >= 0x80), or 0 when invalid.
 * Valid means what Python's strict decoder accepts: no overlong forms, no surrogates,
 * nothing above U+10FFFF (Unicode table 3-7). */
static inline Py_ssize_t
utf8_sequence(const unsigned char *s, const unsigned char *end)
{
    unsigned char c = s[0], low = 0x80, high = 0xBF;
    Py_ssize_t left = end - s;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0)
        return left >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (c == 0xE0)
            low = 0xA0;
        else if (c == 0xED)
            high = 0x9F;
        return left >= 3 && s[1] >= low && s[1] <= high && (s[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c < 0xF5) {
        if (c == 0xF0)
            low = 0x90;
        else if (c == 0xF4)
            high = 0x8F;
        return left >= 4 && s[1] >= low && s[1] <= high && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80
                   ? 4 : 0;
    }
    return 0;
}

/* 1: ASCII, 0: valid UTF-8 with non-ASCII, -1: not UTF-8. */
static int
check_utf8(const unsigned char *s, Py_ssize_t n)
{
    const unsigned char *end = s + n;
    int ascii = 1;
    while (s < end) {
        while (end - s >= 8 && !(load8(s) & HIGHS))
            s += 8;
        if (s >= end)
            break;
        if (*s < 0x80) {
            s++;
            continue;
        }
        Py_ssize_t length = utf8_sequence(s, end);
        if (length == 0)
            return -1;
        ascii = 0;
        s += length;
    }
    return ascii;
}

/* How json's c_encode_basestring (ensure_ascii=False) and PostgreSQL's escape_json write a
 * byte below 0x20 or '"' or '\\': a short escape, or 0 for the \u00XX form. */
static const char SHORT_ESCAPE[0x60] = {
    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't', ['"'] = '"', ['\\'] = '\\',
};

/* The JSON string of UTF-8 text s[0:n]; 0 written, 1 not UTF-8 (nothing usable), -1 error.
 * First pass: validate and size the escapes; second: copy, escaping. */
static int
write_text(Writer *w, const unsigned char *s, Py_ssize_t n)
{
    const unsigned char *p = s, *end = s + n;
    Py_ssize_t extra = 0;
    while (p < end) {
        while (end - p >= 8 && !has_special(load8(p)))
            p += 8;
        if (p >= end)
            break;
        unsigned char c = *p;
        if (c >= 0x80) {
            Py_ssize_t length = utf8_sequence(p, end);
            if (length == 0)
                return 1;
            p += length;
            continue;
        }
        if (c < 0x20 || c == '"' || c == '\\')
            extra += SHORT_ESCAPE[c] ? 1 : 5;
        p++;
    }
    if (writer_reserve(w, n + extra + 2) < 0)
        return -1;
    char *out = w->data + w->size;
    *out++ = '"';
    if (extra == 0) {
        memcpy(out, s, (size_t)n);
        out += n;
    }
    else {
        static const char hex[] = "0123456789abcdef";
        for (p = s; p < end; p++) {
            unsigned char c = *p;
            if (c >= 0x20 && c != '"' && c != '\\') {
                *out++ = (char)c;
                continue;
            }
            *out++ = '\\';
            if (SHORT_ESCAPE[c]) {
                *out++ = SHORT_ESCAPE[c];
            }
            else {
                memcpy(out, "u00", 3);
                out[3] = hex[c >> 4];
                out[4] = hex[c & 0xF];
                out += 5;
            }
        }
    }
    *out++ = '"';
    w->size = out - w->data;
    return 0;
}

/* ------------------------------------------------------------------ one value */

/* The converter's result (a str) as UTF-8 into the writer; 0, 1 (fall back), -1 error. */
static int
write_call(Writer *w, PyObject *convert, const unsigned char *s, Py_ssize_t n)
{
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s, n, NULL);
    if (text == NULL)
        return 1;
    PyObject *json = PyObject_CallOneArg(convert, text);
    Py_DECREF(text);
    if (json == NULL)
        return 1;
    int status = 1; /* a ValueDecoder returns str; anything else is left to the general decoder */
    if (PyUnicode_Check(json)) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(json, &size); /* NULL for lone surrogates */
        status = utf8 == NULL ? 1 : writer_put(w, utf8, size);
    }
    Py_DECREF(json);
    return status;
}

/* The ISO text of a timestamp[tz] in XSD form: `"` date `T` time [`:00`] `"`, for the shapes
 * rowjson's inline expressions accept; anything else goes to the Python converter (which
 * tries the same shape first, then the rare ones: BC, infinity, odd offsets, 5-digit years). */
static int
write_timestamp(Writer *w, enum kind kind, PyObject *convert, const unsigned char *s, Py_ssize_t n, int ascii)
{
    int zone = kind == K_TIMESTAMPTZ;
    int common = ascii && n > (zone ? 21 : 18) && s[4] == '-' && s[10] == ' ' && s[13] == ':'
                 && (zone ? (s[n - 3] == '+' || s[n - 3] == '-') : s[n - 1] != 'C');
    if (!common)
        return write_call(w, convert, s, n);
    if (writer_reserve(w, n + 5) < 0)
        return -1;
    char *out = w->data + w->size;
    *out++ = '"';
    memcpy(out, s, 10);
    out[10] = 'T';
    memcpy(out + 11, s + 11, (size_t)(n - 11));
    out += n;
    if (zone) {
        memcpy(out, ":00", 3); /* PostgreSQL prints a whole-hour offset as +HH */
        out += 3;
    }
    *out++ = '"';
    w->size = out - w->data;
    return 0;
}

/* '"' + text + '"', for texts that hold nothing to escape. */
static int
write_quoted(Writer *w, const unsigned char *s, Py_ssize_t n)
{
    if (writer_reserve(w, n + 2) < 0)
        return -1;
    w->data[w->size] = '"';
    memcpy(w->data + w->size + 1, s, (size_t)n);
    w->data[w->size + n + 1] = '"';
    w->size += n + 2;
    return 0;
}

static inline int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* bytea's hex output (\x...) as the JSON string of its standard base64 (padded, no newlines),
 * what `translate(encode(b, 'base64'), E'\n', '')` gives; anything else (the escape output
 * format, odd or non-hex digits) is left to the converter. */
static int
write_bytea(Writer *w, const unsigned char *s, Py_ssize_t n)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n < 2 || s[0] != '\\' || s[1] != 'x' || (n & 1))
        return 1;
    Py_ssize_t bytes = (n - 2) / 2;
    if (writer_reserve(w, (bytes + 2) / 3 * 4 + 2) < 0)
        return -1;
    char *out = w->data + w->size;
    *out++ = '"';
    const unsigned char *p = s + 2;
    uint32_t group = 0;
    int held = 0;
    for (Py_ssize_t i = 0; i < bytes; i++, p += 2) {
        int high = hex_digit(p[0]), low = hex_digit(p[1]);
        if (high < 0 || low < 0)
            return 1; /* nothing committed: w->size is unchanged */
        group = group << 8 | (uint32_t)(high << 4 | low);
        if (++held == 3) {
            out[0] = alphabet[group >> 18 & 63];
            out[1] = alphabet[group >> 12 & 63];
            out[2] = alphabet[group >> 6 & 63];
            out[3] = alphabet[group & 63];
            out += 4;
            group = 0;
            held = 0;
        }
    }
    if (held == 1) {
        out[0] = alphabet[group >> 2 & 63];
        out[1] = alphabet[(group & 3) << 4];
        out[2] = out[3] = '=';
        out += 4;
    }
    else if (held == 2) {
        out[0] = alphabet[group >> 10 & 63];
        out[1] = alphabet[group >> 4 & 63];
        out[2] = alphabet[(group & 15) << 2];
        out[3] = '=';
        out += 4;
    }
    *out++ = '"';
    w->size = out - w->data;
    return 0;
}

/* One value of a column of `kind` (`convert`: its converter where the kind needs one); 0 written,
 * 1 fall back, -1 error (an exception that is not an Exception). */
static int
write_value(Writer *w, enum kind kind, PyObject *convert, const unsigned char *s, Py_ssize_t n)
{
    int ascii;
    if (kind == K_TEXT)
        return write_text(w, s, n);
    if (kind == K_CALL)
        return write_call(w, convert, s, n);
    if (kind == K_BYTEA)
        return write_bytea(w, s, n);
    ascii = check_utf8(s, n);
    if (ascii < 0)
        return 1;
    switch (kind) {
    case K_RAW:
        return writer_put(w, (const char *)s, n);
    case K_NUMBER:
        if (n == 0)
            return 1;
        if (s[n - 1] > '9' || s[n - 1] < '0') /* NaN, Infinity, -Infinity (and never-sent junk): JSON strings */
            return write_quoted(w, s, n);
        return writer_put(w, (const char *)s, n);
    case K_QUOTED: {
        Py_ssize_t i = 0;
        while (n - i >= 8 && !has_special(load8(s + i))) /* a word at a time where nothing needs a look */
            i += 8;
        for (; i < n; i++) /* never in date or uuid output: leave such text to the general decoder */
            if (s[i] < 0x20 || s[i] == '"' || s[i] == '\\')
                return 1;
        return write_quoted(w, s, n);
    }
    case K_BOOL:
        if (n == 1 && s[0] == 't')
            return writer_put(w, "true", 4);
        if (n == 1 && s[0] == 'f')
            return writer_put(w, "false", 5);
        return 1;
    case K_TIMESTAMPTZ:
    case K_TIMESTAMP:
        return write_timestamp(w, kind, convert, s, n, ascii);
    default:
        PyErr_SetString(PyExc_SystemError, "_jsonvalue: unknown column kind");
        return -1;
    }
}

#endif /* PGSOURCE_JSONVALUE_H */
