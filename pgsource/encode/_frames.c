/*
 * pgsource.encode._frames: Iggy 0.9 message frames in C.
 *
 * The C twin of the frame loops in pgsource/encode/frames.py (encode_frames) and
 * pgsource_testkit/iggy/batches.py (index_and_verify); both give byte-identical results
 * (tests/unit/test_frames.py). Building a frame in Python costs ~0.8 µs (struct.pack,
 * concatenation, a checksum call); here it is a memcpy and one XXH3 pass.
 *
 * XXH3-64 comes from the system's libxxhash (libxxhash0: apt itself depends on it). Only
 * the one stable exported function is declared, so the -dev headers are not needed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "little-endian hosts only; elsewhere pgsource uses the Python twin"
#endif

extern uint64_t XXH3_64bits(const void *data, size_t len);

#define FRAME_HEADER 48
#define MAX_PAYLOAD 64000000 /* the SDK's and server's limit; payloads must not be empty either */
#define BATCH_HEADER 256

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); } /* the host is little-endian, as Iggy */
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The 16 little-endian bytes of a non-negative int below 2**128. */
static int id_bytes(PyObject *value, unsigned char out[16])
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "message id must be int, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    return _PyLong_AsByteArray((PyLongObject *)value, out, 16, 1, 0, 1);
#else
    return _PyLong_AsByteArray((PyLongObject *)value, out, 16, 1, 0);
#endif
}

/* A payload's bytes: bytes as they are, str as UTF-8 (cached by CPython for ASCII). */
static int payload_view(PyObject *payload, const char **data, Py_ssize_t *size)
{
    if (PyBytes_CheckExact(payload)) {
        *data = PyBytes_AS_STRING(payload);
        *size = PyBytes_GET_SIZE(payload);
        return 0;
    }
    if (PyUnicode_Check(payload)) {
        *data = PyUnicode_AsUTF8AndSize(payload, size);
        return *data == NULL ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError, "payload must be str or bytes, not %.100s", Py_TYPE(payload)->tp_name);
    return -1;
}

/* A header with the message's position in its transaction, ``txn_index``: the encoded
 * headers before and after it (``encode_user_headers`` of a dict whose txn_index is "",
 * split where the key sorts) around the entry, whose value is the id's low 48 bits in
 * decimal. Written straight into the frame: no bytes object per message. */
static int position_digits(PyObject *id, char digits[24])
{
    unsigned long long position = PyLong_AsUnsignedLongLongMask(id);
    if (position == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    position &= 0xFFFFFFFFFFFFULL;
    char reversed[24];
    int len = 0;
    do {
        reversed[len++] = (char)('0' + position % 10);
        position /= 10;
    } while (position);
    for (int i = 0; i < len; i++)
        digits[i] = reversed[len - 1 - i];
    return len;
}

static Py_ssize_t header_size(PyObject *hb, PyObject *id)
{
    if (PyBytes_CheckExact(hb))
        return PyBytes_GET_SIZE(hb);
    char digits[24];
    int len = position_digits(id, digits);
    if (len < 0)
        return -1;
    return PyBytes_GET_SIZE(PyTuple_GET_ITEM(hb, 0)) + 5 + 9 + 5 + len + PyBytes_GET_SIZE(PyTuple_GET_ITEM(hb, 1));
}

static void write_header(unsigned char *p, PyObject *hb, PyObject *id)
{
    if (PyBytes_CheckExact(hb)) {
        memcpy(p, PyBytes_AS_STRING(hb), PyBytes_GET_SIZE(hb));
        return;
    }
    char digits[24];
    int len = position_digits(id, digits); /* succeeded in header_size */
    PyObject *before = PyTuple_GET_ITEM(hb, 0), *after = PyTuple_GET_ITEM(hb, 1);
    memcpy(p, PyBytes_AS_STRING(before), PyBytes_GET_SIZE(before)), p += PyBytes_GET_SIZE(before);
    *p++ = 2, put_u32(p, 9), p += 4, memcpy(p, "txn_index", 9), p += 9;
    *p++ = 2, put_u32(p, (uint32_t)len), p += 4, memcpy(p, digits, len), p += len;
    memcpy(p, PyBytes_AS_STRING(after), PyBytes_GET_SIZE(after));
}

static int is_split(PyObject *hb)
{
    return PyTuple_CheckExact(hb) && PyTuple_GET_SIZE(hb) == 2 && PyBytes_CheckExact(PyTuple_GET_ITEM(hb, 0))
        && PyBytes_CheckExact(PyTuple_GET_ITEM(hb, 1));
}

PyDoc_STRVAR(encode_frames_doc,
"encode_frames(ids, payloads, headers, encode_user_headers) -> (frames, checksums)\n\n"
"Frames numbered 0..n-1. ``headers`` is None or a list of dicts (or None) per message;\n"
"each distinct dict (by identity, consecutive) is encoded once by ``encode_user_headers``.\n"
"When that returns (before, after) (a dict whose txn_index is \"\"), each message's headers\n"
"are before + txn_index = the id's low 48 bits in decimal + after.");

static PyObject *encode_frames(PyObject *self, PyObject *args)
{
    PyObject *ids, *payloads, *headers, *encode_headers;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyList_Type, &ids, &PyList_Type, &payloads, &headers, &encode_headers))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(ids);
    if (PyList_GET_SIZE(payloads) != n || (headers != Py_None && (!PyList_Check(headers) || PyList_GET_SIZE(headers) != n))) {
        PyErr_SetString(PyExc_ValueError, "ids, payloads and headers must be lists of the same length");
        return NULL;
    }
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many messages for one batch");
        return NULL;
    }
    /* Pass 1: the encoded headers of each message (borrowed from `encoded`) and the total size. */
    PyObject *encoded = PyList_New(n); /* one reference per message: a bytes object or b"" */
    if (encoded == NULL)
        return NULL;
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *last_dict = NULL, *last_bytes = NULL; /* last_bytes: bytes, or a (before, after) tuple */
    PyObject *frames = NULL, *sums = NULL, *result = NULL;
    Py_ssize_t total = 0;
    if (empty == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = headers == Py_None ? Py_None : PyList_GET_ITEM(headers, i);
        PyObject *hb;
        if (h == Py_None || (PyDict_Check(h) && PyDict_GET_SIZE(h) == 0)) {
            hb = Py_NewRef(empty);
        } else {
            if (h != last_dict) {
                PyObject *made = PyObject_CallOneArg(encode_headers, h);
                if (made == NULL)
                    goto done;
                if (!PyBytes_CheckExact(made) && !is_split(made)) {
                    Py_DECREF(made);
                    PyErr_SetString(PyExc_TypeError, "encode_user_headers must return bytes or (bytes, bytes)");
                    goto done;
                }
                last_dict = h; /* borrowed: `headers` keeps it alive */
                Py_XSETREF(last_bytes, made);
            }
            hb = Py_NewRef(last_bytes);
        }
        PyList_SET_ITEM(encoded, i, hb);
        Py_ssize_t hsize = header_size(hb, PyList_GET_ITEM(ids, i));
        if (hsize < 0)
            goto done;
        const char *data;
        Py_ssize_t size;
        if (payload_view(PyList_GET_ITEM(payloads, i), &data, &size) < 0)
            goto done;
        if (size < 1 || size > MAX_PAYLOAD) {
            PyErr_Format(PyExc_ValueError, "message %zd: payload of %zd bytes; Iggy accepts 1 to %d", i, size, MAX_PAYLOAD);
            goto done;
        }
        total += FRAME_HEADER + size + hsize;
    }
    /* Pass 2: write the frames. */
    frames = PyBytes_FromStringAndSize(NULL, total);
    sums = PyBytes_FromStringAndSize(NULL, n * 8);
    if (frames == NULL || sums == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frames);
    unsigned char *sum_out = (unsigned char *)PyBytes_AS_STRING(sums);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *data = NULL;
        Py_ssize_t size = 0;
        PyObject *hb = PyList_GET_ITEM(encoded, i);
        Py_ssize_t hsize = header_size(hb, PyList_GET_ITEM(ids, i)); /* checked in pass 1 */
        payload_view(PyList_GET_ITEM(payloads, i), &data, &size); /* checked in pass 1 */
        if (id_bytes(PyList_GET_ITEM(ids, i), out + 8) < 0)
            goto done;
        put_u32(out + 24, (uint32_t)i);
        put_u32(out + 28, 0);
        put_u32(out + 32, (uint32_t)hsize);
        put_u32(out + 36, (uint32_t)size);
        put_u64(out + 40, 0);
        memcpy(out + FRAME_HEADER, data, size);
        write_header(out + FRAME_HEADER + size, hb, PyList_GET_ITEM(ids, i));
        Py_ssize_t frame = FRAME_HEADER + size + hsize;
        uint64_t checksum = XXH3_64bits(out + 8, frame - 8);
        put_u64(out, checksum);
        put_u64(sum_out + 8 * i, checksum);
        out += frame;
    }
    result = PyTuple_Pack(2, frames, sums);
done:
    Py_XDECREF(frames);
    Py_XDECREF(sums);
    Py_XDECREF(empty);
    Py_XDECREF(last_bytes);
    Py_DECREF(encoded); /* unfilled slots are NULL, which list dealloc skips */
    return result;
}

PyDoc_STRVAR(index_frames_doc,
"index_frames(batch) -> (starts, checksums) | (error code, reason)\n\n"
"Walk a received batch (256-byte header, then frames): check each frame's length,\n"
"offset delta, reserved bytes and checksum. On success ``starts`` is every frame's offset plus the end,\n"
"as native uint32 bytes, and ``checksums`` the frames' 8-byte checksums back to back.\n"
"On a bad frame the first item is an int: 0 format, 1 count, 2 checksum.");

static PyObject *index_frames(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *batch = view.buf;
    Py_ssize_t total = view.len;
    PyObject *result = NULL;
    PyObject *starts = NULL, *sums = NULL;
    int code = -1;
    const char *reason = NULL;
    if (total < BATCH_HEADER || total > UINT32_MAX) {
        code = 0, reason = "batch shorter than its header";
        goto fail;
    }
    uint64_t count = get_u32(batch + 48);
    if (get_u64(batch + 32) != (uint64_t)total || count == 0 || count > (uint64_t)(total - BATCH_HEADER) / FRAME_HEADER) {
        code = 1, reason = "batch length or count mismatch";
        goto fail;
    }
    starts = PyBytes_FromStringAndSize(NULL, (count + 1) * 4);
    sums = PyBytes_FromStringAndSize(NULL, count * 8);
    if (starts == NULL || sums == NULL)
        goto done;
    unsigned char *start_out = (unsigned char *)PyBytes_AS_STRING(starts);
    unsigned char *sum_out = (unsigned char *)PyBytes_AS_STRING(sums);
    Py_ssize_t pos = BATCH_HEADER;
    uint64_t seen = 0;
    while (pos < total) {
        if (seen == count) {
            code = 1, reason = "frames do not tile message_count";
            goto fail;
        }
        if (total - pos < FRAME_HEADER) {
            code = 0, reason = "truncated frame header";
            goto fail;
        }
        const unsigned char *frame = batch + pos;
        if (get_u32(frame + 24) != seen) {
            code = 0, reason = "offset_delta must count frames from 0";
            goto fail;
        }
        if (get_u64(frame + 40) != 0) {
            code = 0, reason = "reserved bytes of a frame must be zero";
            goto fail;
        }
        uint64_t length = (uint64_t)FRAME_HEADER + get_u32(frame + 32) + get_u32(frame + 36);
        if (length > (uint64_t)(total - pos)) {
            code = 0, reason = "truncated frame";
            goto fail;
        }
        if (XXH3_64bits(frame + 8, length - 8) != get_u64(frame)) {
            code = 2, reason = "frame checksum mismatch";
            goto fail;
        }
        memcpy(sum_out + 8 * seen, frame, 8);
        put_u32(start_out + 4 * seen, (uint32_t)pos);
        seen++;
        pos += (Py_ssize_t)length;
    }
    if (seen != count) {
        code = 1, reason = "frames do not tile message_count";
        goto fail;
    }
    put_u32(start_out + 4 * seen, (uint32_t)total);
    result = PyTuple_Pack(2, starts, sums);
    goto done;
fail:
    result = Py_BuildValue("(is)", code, reason);
done:
    Py_XDECREF(starts);
    Py_XDECREF(sums);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(xxh3_64_doc, "xxh3_64(data) -> int: XXH3-64 of a bytes-like object, from the library the frames use.");

static PyObject *xxh3_64(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t digest = XXH3_64bits(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(digest);
}

static PyMethodDef methods[] = {
    {"encode_frames", encode_frames, METH_VARARGS, encode_frames_doc},
    {"index_frames", index_frames, METH_O, index_frames_doc},
    {"xxh3_64", xxh3_64, METH_O, xxh3_64_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pgsource.encode._frames", "Iggy 0.9 message frames in C (see frames.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__frames(void) { return PyModule_Create(&module); }
