/* A small JSON reader for the files mfres writes itself (config.json,
 * metrics.jsonl, sweep.json): the whole grammar, into a tree of values. */
#ifndef MFRES_STORE_JSON_H
#define MFRES_STORE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    bool boolean;
    double number;
    char *string;              /* JSON_STRING: the decoded text */
    int n;                     /* JSON_ARRAY, JSON_OBJECT: number of items */
    struct json_value *items;  /* the items (an object's values) */
    char **keys;               /* JSON_OBJECT: the keys, beside items */
} json_value;

/* Parses text[0..len) as one JSON value (surrounding white space allowed).
 * On a syntax error returns MFRES_EFORMAT with a message naming `what` (a file
 * name, or "file:line") and the byte offset. */
int json_parse(const char *text, size_t len, const char *what, json_value *out);
/* Reads and parses a whole file. */
int json_parse_file(const char *path, json_value *out);
void json_free(json_value *v);

/* The member `key` of an object, or NULL (also when v is not an object). */
const json_value *json_get(const json_value *v, const char *key);
/* Typed members: return false when missing or of another type. */
bool json_get_number(const json_value *v, const char *key, double *out);
bool json_get_string(const json_value *v, const char *key, const char **out);

/* Structural equality (numbers compared exactly). */
bool json_equal(const json_value *a, const json_value *b);
/* Writes v as compact JSON. */
void json_write(const json_value *v, FILE *fp);

#endif
