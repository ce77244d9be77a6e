/*
 * pgsource.decode._rowjson: the C twin of pgsource/decode/rowjson.py.
 *
 * A Plan is built once per relation from its columns (kind, pre-encoded key, converter).
 * Calling it walks one pgoutput TupleData and returns prefix + the row's JSON + suffix as
 * UTF-8 bytes, byte-identical to the Python row function's result .encode(). It returns
 * None wherever the Python function does: a column count that differs from the plan, an
 * unchanged-TOAST ('u') or binary ('b') value, a tuple that does not end at `end`, a value
 * that is not valid UTF-8, a converter that raises an Exception. The caller then runs the
 * general decoder, which raises the precise error or emits the marker.
 *
 * Every read is bounds-checked against `end` (itself checked against the buffer): a length
 * field that points past the message yields None, never a read out of bounds.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_jsonvalue.h"

static const struct {
    const char *name;
    enum kind kind;
} KIND_NAMES[] = {
    {"int", K_RAW}, {"json", K_RAW}, {"jsonb", K_RAW}, {"number", K_NUMBER}, {"bool", K_BOOL},
    {"date", K_QUOTED}, {"uuid", K_QUOTED}, {"other", K_TEXT}, {"timestamptz", K_TIMESTAMPTZ},
    {"timestamp", K_TIMESTAMP}, {"call", K_CALL},
};

typedef struct {
    enum kind kind;
    PyObject *key;     /* bytes: '{"name":' for the first column, ',"name":' after */
    PyObject *convert; /* callable for K_CALL and K_TIMESTAMP[TZ], else NULL */
} Column;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_ssize_t count;
    Column *columns;
} Plan;

/* ------------------------------------------------------------------ the row */

/* Walk the TupleData m[start:end]; 0 written, 1 fall back, -1 error. */
static int
write_row(Writer *w, const Plan *plan, const unsigned char *m, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t p = start;
    if (end - p < 2 || ((Py_ssize_t)m[p] << 8 | m[p + 1]) != plan->count)
        return 1;
    p += 2;
    for (Py_ssize_t i = 0; i < plan->count; i++) {
        const Column *column = &plan->columns[i];
        if (writer_put(w, PyBytes_AS_STRING(column->key), PyBytes_GET_SIZE(column->key)) < 0)
            return -1;
        if (p >= end)
            return 1;
        unsigned char kind = m[p];
        if (kind == 'n') {
            if (writer_put(w, "null", 4) < 0)
                return -1;
            p += 1;
            continue;
        }
        if (kind != 't' || end - p < 5) /* 'u' (unchanged TOAST), 'b' (binary), junk, truncated */
            return 1;
        uint32_t length = (uint32_t)m[p + 1] << 24 | (uint32_t)m[p + 2] << 16 | (uint32_t)m[p + 3] << 8 | m[p + 4];
        p += 5;
        if ((uint64_t)length > (uint64_t)(end - p)) /* runs past the message */
            return 1;
        int status = write_value(w, column->kind, column->convert, m + p, (Py_ssize_t)length);
        if (status != 0)
            return status;
        p += (Py_ssize_t)length;
    }
    if (p != end)
        return 1;
    return plan->count ? writer_put(w, "}", 1) : writer_put(w, "{}", 2);
}

/* prefix + row + suffix as bytes, None for a row that is not plain, NULL with an exception. */
static PyObject *
encode_row(const Plan *plan, const unsigned char *message, Py_ssize_t start, Py_ssize_t end,
           PyObject *prefix, PyObject *suffix)
{
    PyObject *result = NULL;
    Writer w;
    writer_init(&w);
    int status = writer_put(&w, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix));
    if (status == 0)
        status = write_row(&w, plan, message, start, end);
    if (status == 0)
        status = writer_put(&w, PyBytes_AS_STRING(suffix), PyBytes_GET_SIZE(suffix));
    if (status == 0) {
        result = PyBytes_FromStringAndSize(w.data, w.size);
    }
    else if (status == 1) {
        /* Not a plain row: None. A converter's Exception means the same (the Python twin's
         * `except Exception`); BaseExceptions such as KeyboardInterrupt propagate. */
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();
            result = Py_NewRef(Py_None);
        }
    }
    writer_free(&w);
    return result;
}

static PyObject *
plan_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "Plan() takes no keyword arguments");
        return NULL;
    }
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "Plan() takes 6 arguments (message, text, start, end, prefix, suffix),"
                     " %zd given", nargs);
        return NULL;
    }
    /* args[1], the message decoded as latin-1, is for the Python twin only: ignored. */
    PyObject *prefix = args[4], *suffix = args[5];
    if (!PyBytes_Check(prefix) || !PyBytes_Check(suffix)) {
        PyErr_SetString(PyExc_TypeError, "Plan(): prefix and suffix must be bytes");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[3]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    if (PyBytes_Check(args[0])) { /* the usual case, without the buffer protocol */
        Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
        if (start < 0 || start > end || end > size)
            goto out_of_bounds;
        return encode_row((Plan *)self, (const unsigned char *)PyBytes_AS_STRING(args[0]), start, end, prefix, suffix);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (start >= 0 && start <= end && end <= view.len)
        result = encode_row((Plan *)self, view.buf, start, end, prefix, suffix);
    PyBuffer_Release(&view);
    if (result != NULL || PyErr_Occurred())
        return result;
out_of_bounds:
    PyErr_Format(PyExc_ValueError, "Plan(): start %zd and end %zd do not delimit a part of the message", start, end);
    return NULL;
}

/* ------------------------------------------------------------------ construction */

static int
plan_clear(Plan *self)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_CLEAR(self->columns[i].key);
        Py_CLEAR(self->columns[i].convert);
    }
    return 0;
}

static int
plan_traverse(Plan *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_VISIT(self->columns[i].key);
        Py_VISIT(self->columns[i].convert);
    }
    return 0;
}

static void
plan_dealloc(Plan *self)
{
    PyObject_GC_UnTrack(self);
    plan_clear(self);
    PyMem_Free(self->columns);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Fill one column from (kind name, key bytes, converter or None); -1 with an exception set. */
static int
plan_column(Column *column, Py_ssize_t index, PyObject *item)
{
    PyObject *name, *key, *convert;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        PyErr_Format(PyExc_TypeError, "Plan(): column %zd is not a (kind, key, converter) tuple", index);
        return -1;
    }
    name = PyTuple_GET_ITEM(item, 0);
    key = PyTuple_GET_ITEM(item, 1);
    convert = PyTuple_GET_ITEM(item, 2);
    const char *kind = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (kind == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "Plan(): column %zd: the kind must be a str", index);
        return -1;
    }
    size_t k;
    for (k = 0; k < sizeof(KIND_NAMES) / sizeof(KIND_NAMES[0]); k++)
        if (strcmp(kind, KIND_NAMES[k].name) == 0)
            break;
    if (k == sizeof(KIND_NAMES) / sizeof(KIND_NAMES[0])) {
        PyErr_Format(PyExc_ValueError, "Plan(): column %zd: unknown kind %R", index, name);
        return -1;
    }
    column->kind = KIND_NAMES[k].kind;
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "Plan(): column %zd: the key must be bytes", index);
        return -1;
    }
    int needs_call = column->kind == K_CALL || column->kind == K_TIMESTAMP || column->kind == K_TIMESTAMPTZ;
    if (needs_call && !PyCallable_Check(convert)) {
        PyErr_Format(PyExc_TypeError, "Plan(): column %zd of kind %R needs a converter", index, name);
        return -1;
    }
    column->key = Py_NewRef(key);
    column->convert = needs_call ? Py_NewRef(convert) : NULL;
    return 0;
}

static PyObject *
plan_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *columns;
    static char *keywords[] = {"columns", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Plan", keywords, &columns))
        return NULL;
    PyObject *items = PySequence_Fast(columns, "Plan(): columns must be a sequence");
    if (items == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    Plan *self = (Plan *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(items);
        return NULL;
    }
    self->vectorcall = plan_vectorcall;
    self->columns = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Column));
    if (self->columns == NULL) {
        Py_DECREF(items);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    /* count grows with each filled column, so dealloc releases exactly what was taken. */
    for (Py_ssize_t i = 0; i < count; i++) {
        if (plan_column(&self->columns[i], i, PySequence_Fast_GET_ITEM(items, i)) < 0) {
            Py_DECREF(items);
            Py_DECREF(self);
            return NULL;
        }
        self->count = i + 1;
    }
    Py_DECREF(items);
    return (PyObject *)self;
}

PyDoc_STRVAR(plan_doc,
"Plan(columns)\n--\n\n"
"A relation's row encoder. columns: one (kind, key, converter) per column, kind as\n"
"rowjson._kind names it, key the bytes written before the value ('{\"id\":' first,\n"
"',\"name\":' after), converter the ValueDecoder for 'call' and the timestamp[tz] one\n"
"for the rare shapes (else None). Calling it with (message, text, start, end, prefix,\n"
"suffix) returns prefix + the JSON of the TupleData message[start:end] + suffix as\n"
"UTF-8 bytes, or None when the row is not a plain one (text is ignored).");

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgsource.decode._rowjson.Plan",
    .tp_doc = plan_doc,
    .tp_basicsize = sizeof(Plan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_traverse = (traverseproc)plan_traverse,
    .tp_clear = (inquiry)plan_clear,
    .tp_vectorcall_offset = offsetof(Plan, vectorcall),
    .tp_call = PyVectorcall_Call,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pgsource.decode._rowjson",
    .m_doc = "C twin of pgsource.decode.rowjson: pgoutput TupleData to the row's JSON as bytes.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__rowjson(void)
{
    if (PyType_Ready(&PlanType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PlanType);
    if (PyModule_AddObject(m, "Plan", (PyObject *)&PlanType) < 0) {
        Py_DECREF(&PlanType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
