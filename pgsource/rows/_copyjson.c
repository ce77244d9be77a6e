/*
 * pgsource.rows._copyjson: a polling batch read as COPY text, turned into Iggy frames in one pass.
 *
 * The C twin of pgsource/rows/copyjson.py (byte-identical results, tested against each other
 * and against the row path: TableReader + RowEncoder + encode_partition_frames). A CopyPlan
 * is built once per table from the COPY's field layout; plan.batch(...) returns a CopyBatch,
 * a file-like sink psycopg2's copy_expert writes the COPY output into (one call per row, or
 * any chunking). Each complete line is split on tabs, its COPY escapes undone, and becomes:
 *
 * - the message id: XXH3-128 of `table NUL value NUL value...` (polling_message_id), or 1;
 * - the partition: fixed, balanced (read rows + index), or XXH32 of the key text (key_partition);
 * - the payload, written straight into its partition's frame buffer: prefix, the row's JSON
 *   (the column values through _jsonvalue.h, as the CDC decoder writes them, with the column's
 *   Python converter for the rare shapes), or the payload column as it is, then suffix;
 * - the frame header and its XXH3-64 checksum (pgsource/encode/frames.py's layout).
 *
 * No Python object is made per row (except identities, only when delete/mark need them).
 * write() never raises for bad data: it records the first problem, swallows the rest of the
 * COPY (so the connection's protocol stays in step) and finish() reports it.
 *
 * Every read is bounds-checked against the line; libxxhash provides the hashes (as _frames.c).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../decode/_jsonvalue.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "little-endian hosts only; elsewhere pgsource uses the Python twin"
#endif

typedef struct {
    uint64_t low64, high64;
} XXH128_hash_t;
extern XXH128_hash_t XXH3_128bits(const void *data, size_t len);
extern uint64_t XXH3_64bits(const void *data, size_t len);
extern uint32_t XXH32(const void *data, size_t len, uint32_t seed);

#define FRAME_HEADER 48

/* What the body of a message is. */
enum body { B_OBJECT, B_JSON, B_TEXT, B_BYTEA, B_COMPACT };
static const char *BODY_NAMES[] = {"object", "json", "text", "bytea", "compact"};
/* How a message's partition is chosen. */
enum partitioning { P_FIXED, P_BALANCED, P_KEY };
static const char *PARTITIONING_NAMES[] = {"fixed", "balanced", "key"};
/* What finish() reports (copyjson.py turns each into the SourceError the row path raises). */
enum problem { E_NONE, E_FORMAT, E_NULL_TRACKING, E_NULL_PAYLOAD, E_EMPTY_PAYLOAD, E_OVERSIZE, E_VALUE };

static const struct {
    const char *name;
    enum kind kind;
} KIND_NAMES[] = {
    {"int", K_RAW}, {"json", K_RAW}, {"jsonb", K_RAW}, {"number", K_NUMBER}, {"bool", K_BOOL},
    {"date", K_QUOTED}, {"uuid", K_QUOTED}, {"other", K_TEXT}, {"timestamptz", K_TIMESTAMPTZ},
    {"timestamp", K_TIMESTAMP}, {"call", K_CALL}, {"bytea", K_BYTEA},
};

typedef struct {
    Py_ssize_t field;
    enum kind kind;
    PyObject *key;     /* bytes: '{"name":' for the first column, ',"name":' after */
    PyObject *fast;    /* the converter the kind calls itself (K_CALL, K_TIMESTAMP[TZ]), else NULL */
    PyObject *convert; /* the column's general converter: for values the fast writers leave */
} CopyColumn;

typedef struct {
    Py_ssize_t count;
    Py_ssize_t *at;
} Fields;

typedef struct {
    PyObject_HEAD
    PyObject *table;      /* bytes: the table's name as ids hash it */
    Py_ssize_t nfields;   /* fields per COPY line */
    Fields ids, keys, positions, identities;
    int has_identities;
    Py_ssize_t snapshot;  /* field of the read's snapshot (taken from the first row), or -1 */
    enum body body;
    Py_ssize_t body_field;
    Py_ssize_t ncolumns;
    CopyColumn *columns;
    enum partitioning partitioning;
    uint32_t partitions, partition;
    Py_ssize_t max_payload;
    Py_ssize_t frames_hint; /* the largest partition's frames in the last batch: the next one's first size */
} CopyPlan;

typedef struct {
    const unsigned char *text;
    Py_ssize_t size;
    int null;
} Value;

typedef struct {
    Writer frames, sums;
    uint32_t count;
} Part;

typedef struct {
    PyObject_HEAD
    CopyPlan *plan;
    PyObject *prefix, *suffix, *exclude; /* bytes; exclude: sorted 16-byte big-endian ids, or NULL */
    long long read_rows;
    Value *values;
    Writer tail;     /* an incomplete line carried over from the previous write */
    Writer scratch;  /* the current row's unescaped fields */
    Writer hashed;   /* table NUL values... of the current row */
    Writer key;      /* the current row's partition key text */
    Writer last;     /* the position fields of the last row: (i64 length or -1, bytes)... */
    Writer ids;      /* 16-byte big-endian id of each message */
    Part **parts;    /* by partition, created on first use */
    uint32_t *order; /* partitions in the order of their first message */
    uint32_t nparts;
    PyObject *identities; /* list of tuples, or NULL */
    PyObject *snapshot;   /* str, or NULL */
    Py_ssize_t rows, messages;         /* of the whole COPY */
    Py_ssize_t segment;                /* rows per segment (a batch of its own), 0: one for the whole COPY */
    Py_ssize_t seg_rows, seg_messages; /* of the segment being written */
    PyObject *segments;                /* list of the closed segments' tuples, or NULL */
    enum problem problem;
    PyObject *detail; /* tuple describing the problem */
    int finished;
} CopyBatch;

static PyTypeObject CopyBatchType;

/* ------------------------------------------------------------------ small helpers */

/* A writer into a new bytes object of `capacity` bytes (grown as needed); -1 with an exception. */
static int
writer_init_bytes(Writer *w, Py_ssize_t capacity)
{
    writer_init(w);
    w->bytes = PyBytes_FromStringAndSize(NULL, capacity);
    if (w->bytes == NULL)
        return -1;
    w->data = PyBytes_AS_STRING(w->bytes);
    w->capacity = capacity;
    return 0;
}

/* The written bytes as the writer's own bytes object, cut to size (no copy); NULL on error. */
static PyObject *
writer_take_bytes(Writer *w)
{
    if (_PyBytes_Resize(&w->bytes, w->size) < 0)
        return NULL;
    PyObject *out = w->bytes;
    w->bytes = NULL;
    writer_init(w);
    return out;
}

static void
store_u64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static void
store_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint64_t
big_endian64(uint64_t v)
{
    return __builtin_bswap64(v);
}

/* A str of UTF-8 text; invalid UTF-8 is kept visible with backslash escapes (error details only). */
static PyObject *
text_or_repr(const unsigned char *s, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8((const char *)s, n, "backslashreplace");
}

/* Record the first problem; later rows are skipped. `detail` is stolen (NULL: an error is set). */
static int
set_problem(CopyBatch *b, enum problem problem, PyObject *detail)
{
    if (detail == NULL)
        return -1;
    if (b->problem == E_NONE) {
        b->problem = problem;
        b->detail = detail;
    }
    else {
        Py_DECREF(detail);
    }
    return 0;
}

static PyObject *
value_tuple(CopyBatch *b, const Fields *fields)
{
    PyObject *out = PyTuple_New(fields->count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < fields->count; i++) {
        const Value *v = &b->values[fields->at[i]];
        PyObject *item = v->null ? Py_NewRef(Py_None) : text_or_repr(v->text, v->size);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *
id_long(uint64_t low, uint64_t high)
{
    unsigned char bytes[16];
    store_u64(bytes, low);
    store_u64(bytes + 8, high);
    return _PyLong_FromByteArray(bytes, 16, 1, 0);
}

/* ------------------------------------------------------------------ the fields of a line */

/* Undo COPY text's escapes of s[0:n] into `out` (room for n bytes); the length, or -1 when a
 * backslash ends the field. \b \f \n \r \t \v are control characters; any other escaped
 * character stands for itself (COPY TO writes only these and \\; \N is handled by the caller). */
static Py_ssize_t
unescape(const unsigned char *s, Py_ssize_t n, unsigned char *out)
{
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        if (++i == n)
            return -1;
        c = s[i];
        switch (c) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'v': c = '\v'; break;
        default: break;
        }
        out[o++] = c;
    }
    return o;
}

/* Split line[0:n] (no newline) into b->values; 0 done, 1 a problem was recorded, -1 error. */
static int
split_fields(CopyBatch *b, const unsigned char *line, Py_ssize_t n)
{
    const CopyPlan *plan = b->plan;
    Py_ssize_t field = 0;
    /* Unescaped text is never longer than its source: one reservation for the whole line. */
    b->scratch.size = 0;
    if (writer_reserve(&b->scratch, n + 1) < 0)
        return -1;
    unsigned char *scratch = (unsigned char *)b->scratch.data;
    Py_ssize_t used = 0;
    const unsigned char *s = line, *end = line + n;
    for (;;) {
        const unsigned char *tab = memchr(s, '\t', (size_t)(end - s));
        const unsigned char *stop = tab != NULL ? tab : end;
        if (field == plan->nfields)
            return set_problem(b, E_FORMAT, PyUnicode_FromFormat("a COPY row of more than %zd fields", plan->nfields)) < 0
                       ? -1 : 1;
        Value *v = &b->values[field++];
        Py_ssize_t size = stop - s;
        v->null = size == 2 && s[0] == '\\' && s[1] == 'N';
        if (v->null || memchr(s, '\\', (size_t)size) == NULL) {
            v->text = s;
            v->size = v->null ? 0 : size;
        }
        else {
            Py_ssize_t length = unescape(s, size, scratch + used);
            if (length < 0)
                return set_problem(b, E_FORMAT, PyUnicode_FromString("a COPY field ends in a lone backslash")) < 0 ? -1 : 1;
            v->text = scratch + used;
            v->size = length;
            used += length;
        }
        if (tab == NULL)
            break;
        s = tab + 1;
    }
    if (field != plan->nfields)
        return set_problem(b, E_FORMAT, PyUnicode_FromFormat("a COPY row of %zd fields, expected %zd", field,
                                                             plan->nfields)) < 0 ? -1 : 1;
    return 0;
}

/* ------------------------------------------------------------------ one message body */

/* JSON text without insignificant whitespace (compact_json), for valid JSON from json/jsonb. */
static int
write_compact(Writer *w, const unsigned char *s, Py_ssize_t n)
{
    if (writer_reserve(w, n) < 0)
        return -1;
    char *out = w->data + w->size;
    int in_string = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (in_string) {
            *out++ = (char)c;
            if (c == '\\' && i + 1 < n)
                *out++ = (char)s[++i];
            else if (c == '"')
                in_string = 0;
        }
        else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        }
        else {
            *out++ = (char)c;
            in_string = c == '"';
        }
    }
    w->size = out - w->data;
    return 0;
}

/* bytea text (hex, or the escape format) as its bytes; 0, 1 not bytea text, -1 error. */
static int
write_bytea_raw(Writer *w, const unsigned char *s, Py_ssize_t n)
{
    if (writer_reserve(w, n) < 0)
        return -1;
    unsigned char *out = (unsigned char *)w->data + w->size;
    if (n >= 2 && s[0] == '\\' && s[1] == 'x') {
        if (n & 1)
            return 1;
        for (Py_ssize_t i = 2; i < n; i += 2) {
            int high = hex_digit(s[i]), low = hex_digit(s[i + 1]);
            if (high < 0 || low < 0)
                return 1;
            *out++ = (unsigned char)(high << 4 | low);
        }
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (s[i] != '\\') {
                *out++ = s[i];
            }
            else if (i + 1 < n && s[i + 1] == '\\') {
                *out++ = '\\';
                i++;
            }
            else if (i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7'
                     && s[i + 3] >= '0' && s[i + 3] <= '7') {
                *out++ = (unsigned char)((s[i + 1] - '0') << 6 | (s[i + 2] - '0') << 3 | (s[i + 3] - '0'));
                i += 3;
            }
            else {
                return 1;
            }
        }
    }
    w->size = (char *)out - w->data;
    return 0;
}

/* The row's JSON object; 0 written, 1 a problem was recorded, -1 error. */
static int
write_object(CopyBatch *b, Writer *w)
{
    const CopyPlan *plan = b->plan;
    if (plan->ncolumns == 0)
        return writer_put(w, "{}", 2);
    for (Py_ssize_t i = 0; i < plan->ncolumns; i++) {
        const CopyColumn *column = &plan->columns[i];
        const Value *v = &b->values[column->field];
        if (writer_put(w, PyBytes_AS_STRING(column->key), PyBytes_GET_SIZE(column->key)) < 0)
            return -1;
        if (v->null) {
            if (writer_put(w, "null", 4) < 0)
                return -1;
            continue;
        }
        int status = write_value(w, column->kind, column->fast, v->text, v->size);
        if (status == 1) { /* a rare shape: the column's general converter decides */
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
                return -1;
            PyErr_Clear();
            status = write_call(w, column->convert, v->text, v->size);
        }
        if (status == 1) {
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
                return -1;
            PyObject *type, *value, *traceback, *why;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            why = value != NULL ? PyObject_Str(value) : PyUnicode_FromString("not valid UTF-8, or not a str");
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            if (why == NULL)
                return -1;
            PyObject *text = text_or_repr(v->text, v->size);
            if (text == NULL) {
                Py_DECREF(why);
                return -1;
            }
            return set_problem(b, E_VALUE, Py_BuildValue("(nNN)", i, text, why)) < 0 ? -1 : 1;
        }
        if (status < 0)
            return -1;
    }
    return writer_put(w, "}", 1);
}

/* The payload between prefix and suffix; 0 written, 1 a problem was recorded, -1 error. */
static int
write_body(CopyBatch *b, Writer *w, uint64_t low, uint64_t high)
{
    const CopyPlan *plan = b->plan;
    if (plan->body == B_OBJECT)
        return write_object(b, w);
    const Value *v = &b->values[plan->body_field];
    if (plan->body == B_JSON)
        return v->null ? writer_put(w, "null", 4) : writer_put(w, (const char *)v->text, v->size);
    Py_ssize_t before = w->size;
    int status = 0;
    if (!v->null) {
        if (plan->body == B_TEXT)
            status = writer_put(w, (const char *)v->text, v->size);
        else if (plan->body == B_BYTEA)
            status = write_bytea_raw(w, v->text, v->size);
        else
            status = write_compact(w, v->text, v->size);
        if (status < 0)
            return -1;
        if (status == 1)
            return set_problem(b, E_FORMAT, PyUnicode_FromString("a bytea payload_column value that is not bytea text"))
                           < 0 ? -1 : 1;
    }
    if (v->null || w->size == before) {
        PyObject *id = id_long(low, high);
        if (id == NULL)
            return -1;
        return set_problem(b, v->null ? E_NULL_PAYLOAD : E_EMPTY_PAYLOAD,
                           Py_BuildValue("(NN)", value_tuple(b, &plan->positions), id)) < 0 ? -1 : 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ one row */

static Part *
part_for(CopyBatch *b, uint32_t partition)
{
    Part *part = b->parts[partition];
    if (part != NULL)
        return part;
    part = PyMem_Malloc(sizeof(Part));
    if (part == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    writer_init(&part->sums);
    if (writer_init_bytes(&part->frames, b->plan->frames_hint) < 0) {
        PyMem_Free(part);
        return NULL;
    }
    part->count = 0;
    b->parts[partition] = part;
    b->order[b->nparts++] = partition;
    return part;
}

static int
excluded(const CopyBatch *b, const unsigned char id[16])
{
    if (b->exclude == NULL)
        return 0;
    const unsigned char *blob = (const unsigned char *)PyBytes_AS_STRING(b->exclude);
    Py_ssize_t low = 0, high = PyBytes_GET_SIZE(b->exclude) / 16;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        int order = memcmp(blob + middle * 16, id, 16);
        if (order == 0)
            return 1;
        if (order < 0)
            low = middle + 1;
        else
            high = middle;
    }
    return 0;
}

/* Join the values of `fields` with NUL into w (after its first `keep` bytes); NULL is "". */
static int
join_values(CopyBatch *b, Writer *w, Py_ssize_t keep, const Fields *fields, int leading)
{
    w->size = keep;
    for (Py_ssize_t i = 0; i < fields->count; i++) {
        const Value *v = &b->values[fields->at[i]];
        if ((leading || i > 0) && writer_put(w, "\0", 1) < 0)
            return -1;
        if (!v->null && writer_put(w, (const char *)v->text, v->size) < 0)
            return -1;
    }
    return 0;
}

static int
remember_position(CopyBatch *b)
{
    const Fields *fields = &b->plan->positions;
    b->last.size = 0;
    for (Py_ssize_t i = 0; i < fields->count; i++) {
        const Value *v = &b->values[fields->at[i]];
        int64_t size = v->null ? -1 : (int64_t)v->size;
        if (writer_put(&b->last, (const char *)&size, 8) < 0 || writer_put(&b->last, (const char *)v->text, v->size) < 0)
            return -1;
    }
    return 0;
}

/* The message of the split row: its frame in its partition's buffer; 0, 1 (a problem), -1. */
static int
encode_message(CopyBatch *b)
{
    const CopyPlan *plan = b->plan;
    Py_ssize_t table = PyBytes_GET_SIZE(plan->table);
    if (join_values(b, &b->hashed, table, &plan->ids, 1) < 0)
        return -1;
    XXH128_hash_t id = XXH3_128bits(b->hashed.data, (size_t)b->hashed.size);
    if (id.low64 == 0 && id.high64 == 0)
        id.low64 = 1; /* 0 would make the SDK mint a random id */
    unsigned char id_be[16];
    store_u64(id_be, big_endian64(id.high64));
    store_u64(id_be + 8, big_endian64(id.low64));
    if (excluded(b, id_be))
        return 0;
    uint32_t partition = plan->partition;
    if (plan->partitioning == P_BALANCED) {
        partition = (uint32_t)((unsigned long long)(b->read_rows + b->messages) % plan->partitions);
    }
    else if (plan->partitioning == P_KEY) {
        if (join_values(b, &b->key, 0, &plan->keys, 0) < 0)
            return -1;
        partition = XXH32(b->key.data, (size_t)b->key.size, 0) % plan->partitions;
    }
    Part *part = part_for(b, partition);
    if (part == NULL)
        return -1;
    Writer *w = &part->frames;
    Py_ssize_t at = w->size;
    if (writer_reserve(w, FRAME_HEADER) < 0)
        return -1;
    w->size += FRAME_HEADER;
    int status = writer_put(w, PyBytes_AS_STRING(b->prefix), PyBytes_GET_SIZE(b->prefix));
    if (status == 0)
        status = write_body(b, w, id.low64, id.high64);
    if (status == 0)
        status = writer_put(w, PyBytes_AS_STRING(b->suffix), PyBytes_GET_SIZE(b->suffix));
    if (status != 0) {
        w->size = at;
        return status;
    }
    Py_ssize_t payload = w->size - at - FRAME_HEADER;
    if (payload > plan->max_payload || payload == 0) {
        w->size = at;
        if (payload == 0) {
            PyObject *message_id = id_long(id.low64, id.high64);
            if (message_id == NULL)
                return -1;
            return set_problem(b, E_EMPTY_PAYLOAD, Py_BuildValue("(NN)", value_tuple(b, &plan->positions), message_id))
                           < 0 ? -1 : 1;
        }
        return set_problem(b, E_OVERSIZE, Py_BuildValue("(Nn)", value_tuple(b, &plan->keys), payload)) < 0 ? -1 : 1;
    }
    unsigned char *frame = (unsigned char *)w->data + at;
    store_u64(frame + 8, id.low64);
    store_u64(frame + 16, id.high64);
    store_u32(frame + 24, part->count);
    store_u32(frame + 28, 0);
    store_u32(frame + 32, 0);
    store_u32(frame + 36, (uint32_t)payload);
    store_u64(frame + 40, 0);
    uint64_t checksum = XXH3_64bits(frame + 8, (size_t)(payload + FRAME_HEADER - 8));
    store_u64(frame, checksum);
    if (writer_put(&part->sums, (const char *)&checksum, 8) < 0 || writer_put(&b->ids, (const char *)id_be, 16) < 0)
        return -1;
    part->count++;
    b->seg_messages++;
    if (plan->has_identities) {
        PyObject *identity = value_tuple(b, &plan->identities);
        if (identity == NULL)
            return -1;
        int failed = PyList_Append(b->identities, identity);
        Py_DECREF(identity);
        if (failed)
            return -1;
    }
    b->messages++;
    return 0;
}

static int close_segment(CopyBatch *b);

/* One line (without its newline); 0 or -1 with an exception (a problem is recorded, not raised). */
static int
handle_line(CopyBatch *b, const unsigned char *line, Py_ssize_t n)
{
    if (b->problem != E_NONE)
        return 0;
    int status = split_fields(b, line, n);
    if (status != 0)
        return status < 0 ? -1 : 0;
    const CopyPlan *plan = b->plan;
    b->rows++;
    b->seg_rows++;
    if (remember_position(b) < 0)
        return -1;
    if (b->rows == 1 && plan->snapshot >= 0) {
        const Value *v = &b->values[plan->snapshot];
        b->snapshot = v->null ? Py_NewRef(Py_None) : text_or_repr(v->text, v->size);
        if (b->snapshot == NULL)
            return -1;
    }
    if (plan->positions.count && b->values[plan->positions.at[0]].null) {
        const Value *v = &b->values[plan->body == B_OBJECT ? plan->positions.at[0] : plan->body_field];
        PyObject *text = v->null ? PyUnicode_FromString("") : text_or_repr(v->text, v->size);
        return set_problem(b, E_NULL_TRACKING, Py_BuildValue("(N)", text)) < 0 ? -1 : 0;
    }
    if (encode_message(b) < 0)
        return -1;
    if (b->segment && b->seg_rows == b->segment && b->problem == E_NONE)
        return close_segment(b);
    return 0;
}

/* ------------------------------------------------------------------ the sink */

static int
feed(CopyBatch *b, const unsigned char *data, Py_ssize_t size)
{
    const unsigned char *p = data, *end = data + size;
    if (b->tail.size) { /* finish the line the previous write began */
        const unsigned char *newline = memchr(p, '\n', (size_t)(end - p));
        if (newline == NULL)
            return writer_put(&b->tail, (const char *)p, end - p);
        if (writer_put(&b->tail, (const char *)p, newline - p) < 0)
            return -1;
        p = newline + 1;
        int status = handle_line(b, (const unsigned char *)b->tail.data, b->tail.size);
        b->tail.size = 0;
        if (status < 0)
            return -1;
    }
    while (p < end) {
        const unsigned char *newline = memchr(p, '\n', (size_t)(end - p));
        if (newline == NULL)
            return writer_put(&b->tail, (const char *)p, end - p);
        if (handle_line(b, p, newline - p) < 0)
            return -1;
        p = newline + 1;
    }
    return 0;
}

static PyObject *
batch_write(CopyBatch *b, PyObject *data)
{
    if (b->finished) {
        PyErr_SetString(PyExc_ValueError, "CopyBatch.write() after finish()");
        return NULL;
    }
    Py_ssize_t size;
    int status;
    if (PyBytes_Check(data)) {
        size = PyBytes_GET_SIZE(data);
        status = feed(b, (const unsigned char *)PyBytes_AS_STRING(data), size);
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        size = view.len;
        status = feed(b, view.buf, view.len);
        PyBuffer_Release(&view);
    }
    if (status < 0)
        return NULL;
    return PyLong_FromSsize_t(size);
}

static PyObject *
last_position(CopyBatch *b)
{
    const Fields *fields = &b->plan->positions;
    PyObject *out = PyTuple_New(fields->count);
    if (out == NULL)
        return NULL;
    const char *p = b->last.data;
    for (Py_ssize_t i = 0; i < fields->count; i++) {
        int64_t size;
        memcpy(&size, p, 8);
        p += 8;
        PyObject *item = size < 0 ? Py_NewRef(Py_None) : text_or_repr((const unsigned char *)p, (Py_ssize_t)size);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
        p += size < 0 ? 0 : size;
    }
    return out;
}

static PyObject *
batch_parts(CopyBatch *b)
{
    PyObject *parts = PyList_New(b->nparts);
    if (parts == NULL)
        return NULL;
    Py_ssize_t largest = 0;
    for (uint32_t i = 0; i < b->nparts; i++)
        largest = b->parts[b->order[i]]->frames.size > largest ? b->parts[b->order[i]]->frames.size : largest;
    b->plan->frames_hint = largest + largest / 16 + 4096;
    for (uint32_t i = 0; i < b->nparts; i++) {
        Part *part = b->parts[b->order[i]];
        PyObject *frames = writer_take_bytes(&part->frames);
        PyObject *item = frames == NULL ? NULL : Py_BuildValue("(IkNy#)", b->order[i], (unsigned long)part->count, frames,
                                                               part->sums.data, part->sums.size);
        if (item == NULL) {
            Py_DECREF(parts);
            return NULL;
        }
        PyList_SET_ITEM(parts, i, item);
    }
    for (uint32_t i = 0; i < b->nparts; i++) { /* the next segment starts with no partition */
        Part *part = b->parts[b->order[i]];
        b->parts[b->order[i]] = NULL;
        writer_free(&part->frames);
        writer_free(&part->sums);
        PyMem_Free(part);
    }
    b->nparts = 0;
    return parts;
}

/* The tuple of the segment written so far (see finish()), and a fresh start for the next; NULL on error. */
static PyObject *
segment_tuple(CopyBatch *b)
{
    PyObject *parts = batch_parts(b);
    if (parts == NULL)
        return NULL;
    PyObject *position = b->seg_rows ? last_position(b) : Py_NewRef(Py_None);
    PyObject *identities = b->identities ? b->identities : Py_None;
    PyObject *out = position == NULL ? NULL : Py_BuildValue("(NnnNOy#OO)", parts, b->seg_rows, b->seg_messages, position,
                                                            b->snapshot ? b->snapshot : Py_None, b->ids.data,
                                                            b->ids.size, identities, Py_None);
    if (position == NULL)
        Py_DECREF(parts);
    if (out == NULL)
        return NULL;
    b->ids.size = 0;
    b->seg_rows = b->seg_messages = 0;
    if (b->identities != NULL) {
        Py_SETREF(b->identities, PyList_New(0));
        if (b->identities == NULL) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static int
close_segment(CopyBatch *b)
{
    PyObject *segment = segment_tuple(b);
    if (segment == NULL)
        return -1;
    int failed = PyList_Append(b->segments, segment);
    Py_DECREF(segment);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(batch_finish_doc,
"finish() -> (parts, rows, messages, position, snapshot, ids, identities, problem), or a list of them\n\n"
"With segment=N: a list, one tuple per N rows read (the last may hold fewer), each numbered and\n"
"framed as a batch of its own; a bad row ends the list with its problem tuple. Otherwise one tuple:\n"
"parts: [(partition, count, frames, checksums)] in the order of each partition's first message;\n"
"rows read and messages made (rows less the excluded ones); position: the position values of\n"
"the last row read (None when no row); snapshot: the snapshot field of the first row; ids: the\n"
"messages' 16-byte big-endian ids; identities: a list of tuples or None; problem: None or\n"
"(code, detail) for the first bad row (nothing of the batch may be sent then).");

static PyObject *
batch_finish(CopyBatch *b, PyObject *Py_UNUSED(ignored))
{
    if (b->finished) {
        PyErr_SetString(PyExc_ValueError, "CopyBatch.finish() called twice");
        return NULL;
    }
    b->finished = 1;
    if (b->tail.size && b->problem == E_NONE) {
        b->problem = E_FORMAT;
        b->detail = PyUnicode_FromString("the COPY output ended in the middle of a row");
        if (b->detail == NULL)
            return NULL;
    }
    PyObject *last;
    if (b->problem != E_NONE)
        last = Py_BuildValue("([]nnOOy#O(iO))", b->seg_rows, b->seg_messages, Py_None, Py_None, "", (Py_ssize_t)0,
                             Py_None, (int)b->problem, b->detail);
    else if (b->segment && b->seg_rows == 0 && PyList_GET_SIZE(b->segments))
        return Py_NewRef(b->segments); /* the COPY ended on a segment's last row */
    else
        last = segment_tuple(b);
    if (last == NULL || !b->segment)
        return last;
    int failed = PyList_Append(b->segments, last);
    Py_DECREF(last);
    return failed ? NULL : Py_NewRef(b->segments);
}

static PyObject *
batch_writable(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_TRUE;
}

static int
batch_traverse(CopyBatch *b, visitproc visit, void *arg)
{
    Py_VISIT(b->plan);
    Py_VISIT(b->identities);
    Py_VISIT(b->detail);
    Py_VISIT(b->segments);
    return 0;
}

static int
batch_clear(CopyBatch *b)
{
    Py_CLEAR(b->identities);
    Py_CLEAR(b->detail);
    Py_CLEAR(b->snapshot);
    Py_CLEAR(b->segments);
    return 0;
}

static void
batch_dealloc(CopyBatch *b)
{
    PyObject_GC_UnTrack(b);
    batch_clear(b);
    if (b->parts != NULL) {
        for (uint32_t i = 0; i < b->nparts; i++) {
            Part *part = b->parts[b->order[i]];
            writer_free(&part->frames);
            writer_free(&part->sums);
            PyMem_Free(part);
        }
    }
    PyMem_Free(b->parts);
    PyMem_Free(b->order);
    PyMem_Free(b->values);
    writer_free(&b->tail);
    writer_free(&b->scratch);
    writer_free(&b->hashed);
    writer_free(&b->key);
    writer_free(&b->last);
    writer_free(&b->ids);
    Py_XDECREF(b->prefix);
    Py_XDECREF(b->suffix);
    Py_XDECREF(b->exclude);
    Py_XDECREF(b->plan);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyMethodDef batch_methods[] = {
    {"write", (PyCFunction)batch_write, METH_O, "write(data) -> len(data): COPY output, any chunking."},
    {"finish", (PyCFunction)batch_finish, METH_NOARGS, batch_finish_doc},
    {"writable", batch_writable, METH_NOARGS, "True."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CopyBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgsource.rows._copyjson.CopyBatch",
    .tp_doc = "One batch's COPY sink: write() the COPY output, then finish(). Made by CopyPlan.batch().",
    .tp_basicsize = sizeof(CopyBatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_methods = batch_methods,
};

PyDoc_STRVAR(plan_batch_doc,
"batch(prefix, suffix, read_rows, exclude=None, segment=0) -> CopyBatch\n\n"
"A sink for one COPY: prefix/suffix (bytes) around each body, read_rows the rows read before\n"
"(balanced partitioning counts on), exclude the sorted 16-byte big-endian ids to leave out,\n"
"segment: cut the output into batches of that many rows (0: one batch).");

static PyObject *
plan_batch(CopyPlan *plan, PyObject *args, PyObject *kwargs)
{
    PyObject *prefix, *suffix, *exclude = Py_None;
    long long read_rows;
    Py_ssize_t segment = 0;
    static char *keywords[] = {"prefix", "suffix", "read_rows", "exclude", "segment", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!L|On:batch", keywords, &PyBytes_Type, &prefix, &PyBytes_Type,
                                     &suffix, &read_rows, &exclude, &segment))
        return NULL;
    if (exclude != Py_None && (!PyBytes_Check(exclude) || PyBytes_GET_SIZE(exclude) % 16)) {
        PyErr_SetString(PyExc_TypeError, "batch(): exclude must be None or bytes of 16-byte ids");
        return NULL;
    }
    if (read_rows < 0 || segment < 0) {
        PyErr_SetString(PyExc_ValueError, "batch(): read_rows and segment must not be negative");
        return NULL;
    }
    CopyBatch *b = PyObject_GC_New(CopyBatch, &CopyBatchType);
    if (b == NULL)
        return NULL;
    memset((char *)b + sizeof(PyObject), 0, sizeof(CopyBatch) - sizeof(PyObject));
    b->plan = (CopyPlan *)Py_NewRef(plan);
    b->prefix = Py_NewRef(prefix);
    b->suffix = Py_NewRef(suffix);
    b->exclude = exclude == Py_None || PyBytes_GET_SIZE(exclude) == 0 ? NULL : Py_NewRef(exclude);
    b->read_rows = read_rows;
    b->segment = segment;
    writer_init(&b->tail);
    writer_init(&b->scratch);
    writer_init(&b->hashed);
    writer_init(&b->key);
    writer_init(&b->last);
    writer_init(&b->ids);
    b->values = PyMem_Calloc((size_t)plan->nfields, sizeof(Value));
    b->parts = PyMem_Calloc(plan->partitions, sizeof(Part *));
    b->order = PyMem_Calloc(plan->partitions, sizeof(uint32_t));
    if (b->values == NULL || b->parts == NULL || b->order == NULL
        || writer_put(&b->hashed, PyBytes_AS_STRING(plan->table), PyBytes_GET_SIZE(plan->table)) < 0) {
        PyObject_GC_Track(b);
        Py_DECREF(b);
        return PyErr_NoMemory();
    }
    if ((plan->has_identities && (b->identities = PyList_New(0)) == NULL)
        || (segment && (b->segments = PyList_New(0)) == NULL)) {
        PyObject_GC_Track(b);
        Py_DECREF(b);
        return NULL;
    }
    PyObject_GC_Track(b);
    return (PyObject *)b;
}

/* ------------------------------------------------------------------ the plan */

static int
plan_traverse(CopyPlan *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->ncolumns; i++) {
        Py_VISIT(self->columns[i].key);
        Py_VISIT(self->columns[i].fast);
        Py_VISIT(self->columns[i].convert);
    }
    return 0;
}

static int
plan_clear(CopyPlan *self)
{
    for (Py_ssize_t i = 0; i < self->ncolumns; i++) {
        Py_CLEAR(self->columns[i].key);
        Py_CLEAR(self->columns[i].fast);
        Py_CLEAR(self->columns[i].convert);
    }
    return 0;
}

static void
plan_dealloc(CopyPlan *self)
{
    PyObject_GC_UnTrack(self);
    plan_clear(self);
    PyMem_Free(self->columns);
    PyMem_Free(self->ids.at);
    PyMem_Free(self->keys.at);
    PyMem_Free(self->positions.at);
    PyMem_Free(self->identities.at);
    Py_XDECREF(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A field index in [0, nfields); -1 with an exception. */
static Py_ssize_t
field_index(PyObject *item, Py_ssize_t nfields, const char *what)
{
    Py_ssize_t field = PyLong_AsSsize_t(item);
    if (field == -1 && PyErr_Occurred())
        return -1;
    if (field < 0 || field >= nfields) {
        PyErr_Format(PyExc_ValueError, "CopyPlan(): %s field %zd is not one of the %zd fields", what, field, nfields);
        return -1;
    }
    return field;
}

static int
fields_from(Fields *out, PyObject *sequence, Py_ssize_t nfields, const char *what)
{
    PyObject *items = PySequence_Fast(sequence, "CopyPlan(): field lists must be sequences");
    if (items == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    out->at = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_ssize_t));
    if (out->at == NULL) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t field = field_index(PySequence_Fast_GET_ITEM(items, i), nfields, what);
        if (field < 0) {
            Py_DECREF(items);
            return -1;
        }
        out->at[i] = field;
        out->count = i + 1;
    }
    Py_DECREF(items);
    return 0;
}

static int
name_index(PyObject *name, const char **names, int count, const char *what)
{
    const char *text = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (text != NULL)
        for (int i = 0; i < count; i++)
            if (strcmp(text, names[i]) == 0)
                return i;
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "CopyPlan(): unknown %s %R", what, name);
    return -1;
}

/* One JSON column from (field, kind, key bytes, fast converter or None, converter). */
static int
plan_column(CopyColumn *column, Py_ssize_t index, PyObject *item, Py_ssize_t nfields)
{
    PyObject *field, *name, *key, *fast, *convert;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OOOOO", &field, &name, &key, &fast, &convert)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "CopyPlan(): column %zd is not a (field, kind, key, fast, converter) tuple", index);
        return -1;
    }
    column->field = field_index(field, nfields, "column");
    if (column->field < 0)
        return -1;
    const char *kind = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    size_t k = 0;
    for (; kind != NULL && k < sizeof(KIND_NAMES) / sizeof(KIND_NAMES[0]); k++)
        if (strcmp(kind, KIND_NAMES[k].name) == 0)
            break;
    if (kind == NULL || k == sizeof(KIND_NAMES) / sizeof(KIND_NAMES[0])) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "CopyPlan(): column %zd: unknown kind %R", index, name);
        return -1;
    }
    column->kind = KIND_NAMES[k].kind;
    int needs_fast = column->kind == K_CALL || column->kind == K_TIMESTAMP || column->kind == K_TIMESTAMPTZ;
    if (!PyBytes_Check(key) || !PyCallable_Check(convert) || (needs_fast && !PyCallable_Check(fast))) {
        PyErr_Format(PyExc_TypeError, "CopyPlan(): column %zd needs a bytes key and converters", index);
        return -1;
    }
    column->key = Py_NewRef(key);
    column->fast = needs_fast ? Py_NewRef(fast) : NULL;
    column->convert = Py_NewRef(convert);
    return 0;
}

static int
plan_columns(CopyPlan *self, PyObject *columns)
{
    PyObject *items = PySequence_Fast(columns, "CopyPlan(): columns must be a sequence");
    if (items == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    self->columns = PyMem_Calloc(count ? (size_t)count : 1, sizeof(CopyColumn));
    if (self->columns == NULL) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) { /* ncolumns grows with each filled column, for dealloc */
        if (plan_column(&self->columns[i], i, PySequence_Fast_GET_ITEM(items, i), self->nfields) < 0) {
            Py_DECREF(items);
            return -1;
        }
        self->ncolumns = i + 1;
    }
    Py_DECREF(items);
    return 0;
}

static PyObject *
plan_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *table, *ids, *keys, *positions, *identities, *body, *columns, *partitioning;
    Py_ssize_t nfields, snapshot, body_field, max_payload;
    unsigned int partitions, partition;
    static char *keywords[] = {"table", "fields", "ids", "keys", "positions", "identities", "snapshot", "body",
                               "body_field", "columns", "partitioning", "partitions", "partition", "max_payload", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nOOOOnOnOOIIn:CopyPlan", keywords, &PyBytes_Type, &table,
                                     &nfields, &ids, &keys, &positions, &identities, &snapshot, &body, &body_field,
                                     &columns, &partitioning, &partitions, &partition, &max_payload))
        return NULL;
    if (nfields < 1 || nfields > 100000 || partitions < 1 || partition >= partitions || max_payload < 1) {
        PyErr_SetString(PyExc_ValueError, "CopyPlan(): fields, partitions, partition or max_payload out of range");
        return NULL;
    }
    CopyPlan *self = (CopyPlan *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->table = Py_NewRef(table);
    self->nfields = nfields;
    self->partitions = partitions;
    self->partition = partition;
    self->max_payload = max_payload;
    self->frames_hint = 64 * 1024;
    self->snapshot = -1;
    int body_kind = name_index(body, BODY_NAMES, 5, "body");
    int chooser = body_kind < 0 ? -1 : name_index(partitioning, PARTITIONING_NAMES, 3, "partitioning");
    if (chooser < 0 || fields_from(&self->ids, ids, nfields, "id") < 0 || fields_from(&self->keys, keys, nfields, "key") < 0
        || fields_from(&self->positions, positions, nfields, "position") < 0)
        goto fail;
    self->body = (enum body)body_kind;
    self->partitioning = (enum partitioning)chooser;
    if (identities != Py_None) {
        if (fields_from(&self->identities, identities, nfields, "identity") < 0)
            goto fail;
        self->has_identities = 1;
    }
    if (snapshot < -1 || snapshot >= nfields) {
        PyErr_SetString(PyExc_ValueError, "CopyPlan(): snapshot is not a field");
        goto fail;
    }
    self->snapshot = snapshot;
    if (self->body != B_OBJECT && (body_field < 0 || body_field >= nfields)) {
        PyErr_SetString(PyExc_ValueError, "CopyPlan(): body_field is not a field");
        goto fail;
    }
    self->body_field = body_field;
    if (plan_columns(self, columns) < 0)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

PyDoc_STRVAR(plan_doc,
"CopyPlan(table, fields, ids, keys, positions, identities, snapshot, body, body_field, columns,\n"
"         partitioning, partitions, partition, max_payload)\n--\n\n"
"How the lines of one COPY become messages. table: the name ids hash (bytes); fields: fields\n"
"per line; ids/keys/positions/identities: field indexes (identities None when not needed);\n"
"snapshot: the snapshot field or -1; body: 'object' (columns: (field, kind, key, fast, converter)\n"
"each), 'json', 'text', 'bytea' or 'compact' (of body_field); partitioning: 'fixed' (partition),\n"
"'balanced' or 'key', over partitions; max_payload: the largest payload Iggy takes.");

static PyMethodDef plan_methods[] = {
    {"batch", (PyCFunction)(void (*)(void))plan_batch, METH_VARARGS | METH_KEYWORDS, plan_batch_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CopyPlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgsource.rows._copyjson.CopyPlan",
    .tp_doc = plan_doc,
    .tp_basicsize = sizeof(CopyPlan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_traverse = (traverseproc)plan_traverse,
    .tp_clear = (inquiry)plan_clear,
    .tp_methods = plan_methods,
};

PyDoc_STRVAR(sort_ids_doc, "sort_ids(blob) -> bytes: 16-byte ids sorted (memcmp order), for exclude=.");

static int
compare_ids(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

static PyObject *
sort_ids(PyObject *module, PyObject *blob)
{
    if (!PyBytes_Check(blob) || PyBytes_GET_SIZE(blob) % 16) {
        PyErr_SetString(PyExc_TypeError, "sort_ids(): bytes of 16-byte ids");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob));
    if (out != NULL && PyBytes_GET_SIZE(out))
        qsort(PyBytes_AS_STRING(out), (size_t)(PyBytes_GET_SIZE(out) / 16), 16, compare_ids);
    return out;
}

static PyMethodDef module_methods[] = {
    {"sort_ids", sort_ids, METH_O, sort_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pgsource.rows._copyjson",
    .m_doc = "C twin of pgsource.rows.copyjson: a polling batch's COPY text to Iggy frames.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__copyjson(void)
{
    if (PyType_Ready(&CopyPlanType) < 0 || PyType_Ready(&CopyBatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CopyPlanType);
    if (PyModule_AddObject(m, "CopyPlan", (PyObject *)&CopyPlanType) < 0) {
        Py_DECREF(&CopyPlanType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "E_FORMAT", E_FORMAT) < 0 || PyModule_AddIntConstant(m, "E_NULL_TRACKING", E_NULL_TRACKING) < 0
        || PyModule_AddIntConstant(m, "E_NULL_PAYLOAD", E_NULL_PAYLOAD) < 0
        || PyModule_AddIntConstant(m, "E_EMPTY_PAYLOAD", E_EMPTY_PAYLOAD) < 0
        || PyModule_AddIntConstant(m, "E_OVERSIZE", E_OVERSIZE) < 0 || PyModule_AddIntConstant(m, "E_VALUE", E_VALUE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
