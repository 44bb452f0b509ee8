#include "yaml.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 64
#define YAML_MAX_FILE (4u << 20)

void cm_ynode_free(struct cm_ynode *node)
{
    if (!node)
        return;
    size_t count = node->type == CM_YNODE_MAP ? node->n * 2 : node->n;
    if (node->type == CM_YNODE_MAP && node->scalar)
        count++; /* a key whose value never came */
    for (size_t i = 0; i < count; i++)
        cm_ynode_free(node->items[i]);
    free(node->items);
    free(node->scalar);
    free(node);
}

struct cm_ynode *cm_ynode_get(const struct cm_ynode *map, const char *key)
{
    if (!map || map->type != CM_YNODE_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++) {
        const struct cm_ynode *k = map->items[2 * i];
        if (k->type == CM_YNODE_SCALAR && strcmp(k->scalar, key) == 0)
            return map->items[2 * i + 1];
    }
    return NULL;
}

static int push_item(struct cm_ynode *parent, struct cm_ynode *child)
{
    size_t count = parent->type == CM_YNODE_MAP ? parent->n * 2 : parent->n;
    /* Maps are stored flat; n counts pairs, so track the raw count through a trailing odd key. */
    size_t raw = count + ((parent->type == CM_YNODE_MAP && parent->scalar) ? 1 : 0);
    struct cm_ynode **items = realloc(parent->items, (raw + 1) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    parent->items = items;
    items[raw] = child;
    if (parent->type == CM_YNODE_MAP) {
        /* scalar is used as a "key pending" flag while building a map */
        if (parent->scalar) {
            free(parent->scalar);
            parent->scalar = NULL;
            parent->n++;
        } else {
            parent->scalar = strdup("k");
            if (!parent->scalar)
                return -ENOMEM;
        }
    } else {
        parent->n++;
    }
    return 0;
}

static struct cm_ynode *new_node(enum cm_ynode_type type, const yaml_mark_t *mark)
{
    struct cm_ynode *node = calloc(1, sizeof(*node));
    if (!node)
        return NULL;
    node->type = type;
    node->line = (unsigned)mark->line + 1;
    node->col = (unsigned)mark->column + 1;
    return node;
}

struct cm_ynode *cm_yaml_parse(const char *text, size_t len, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_event_t event;
    struct cm_ynode *stack[YAML_MAX_DEPTH];
    int depth = 0;
    struct cm_ynode *root = NULL;
    int done = 0;

    if (!yaml_parser_initialize(&parser)) {
        snprintf(err, errlen, "0:0: out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    while (!done) {
        if (!yaml_parser_parse(&parser, &event)) {
            snprintf(err, errlen, "%zu:%zu: %s", parser.problem_mark.line + 1,
                     parser.problem_mark.column + 1,
                     parser.problem ? parser.problem : "syntax error");
            goto fail;
        }
        struct cm_ynode *node = NULL;
        const yaml_char_t *tag = event.type == YAML_SCALAR_EVENT ? event.data.scalar.tag
                                 : event.type == YAML_SEQUENCE_START_EVENT
                                     ? event.data.sequence_start.tag
                                 : event.type == YAML_MAPPING_START_EVENT
                                     ? event.data.mapping_start.tag
                                     : NULL;
        if (tag) {
            snprintf(err, errlen, "%zu:%zu: tags are not supported", event.start_mark.line + 1,
                     event.start_mark.column + 1);
            yaml_event_delete(&event);
            goto fail;
        }
        switch (event.type) {
        case YAML_STREAM_END_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            done = 1;
            break;
        case YAML_ALIAS_EVENT:
            snprintf(err, errlen, "%zu:%zu: aliases are not supported", event.start_mark.line + 1,
                     event.start_mark.column + 1);
            yaml_event_delete(&event);
            goto fail;
        case YAML_SCALAR_EVENT:
            node = new_node(CM_YNODE_SCALAR, &event.start_mark);
            if (node) {
                node->scalar = strndup((const char *)event.data.scalar.value,
                                       event.data.scalar.length);
                node->quoted = event.data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                               event.data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
                if (!node->scalar) {
                    free(node);
                    node = NULL;
                }
            }
            break;
        case YAML_SEQUENCE_START_EVENT:
            node = new_node(CM_YNODE_SEQ, &event.start_mark);
            break;
        case YAML_MAPPING_START_EVENT:
            node = new_node(CM_YNODE_MAP, &event.start_mark);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0) {
                struct cm_ynode *closed = stack[--depth];
                if (closed->type == CM_YNODE_MAP && closed->scalar) {
                    free(closed->scalar);
                    closed->scalar = NULL;
                }
            }
            break;
        default:
            break;
        }
        int is_start = event.type == YAML_SEQUENCE_START_EVENT ||
                       event.type == YAML_MAPPING_START_EVENT;
        int wants_node = event.type == YAML_SCALAR_EVENT || is_start;
        yaml_event_delete(&event);
        if (!wants_node)
            continue;
        if (!node) {
            snprintf(err, errlen, "0:0: out of memory");
            goto fail;
        }
        if (depth == 0) {
            if (root) {
                cm_ynode_free(node);
                snprintf(err, errlen, "%u:%u: more than one root node", node->line, node->col);
                goto fail;
            }
            root = node;
        } else if (push_item(stack[depth - 1], node) < 0) {
            cm_ynode_free(node);
            snprintf(err, errlen, "0:0: out of memory");
            goto fail;
        }
        if (is_start) {
            if (depth == YAML_MAX_DEPTH) {
                snprintf(err, errlen, "%u:%u: nested too deeply", node->line, node->col);
                goto fail;
            }
            stack[depth++] = node;
        }
    }
    yaml_parser_delete(&parser);
    if (!root) {
        snprintf(err, errlen, "1:1: empty document");
        return NULL;
    }
    return root;
fail:
    /* Pending-key markers are freed along with the tree. */
    yaml_parser_delete(&parser);
    cm_ynode_free(root);
    return NULL;
}

struct cm_ynode *cm_yaml_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(YAML_MAX_FILE);
    size_t len = buf ? fread(buf, 1, YAML_MAX_FILE, f) : 0;
    int toolarge = buf && len == YAML_MAX_FILE;
    fclose(f);
    if (!buf || toolarge) {
        snprintf(err, errlen, "%s: %s", path, buf ? "file too large" : "out of memory");
        free(buf);
        return NULL;
    }
    char inner[512];
    struct cm_ynode *root = cm_yaml_parse(buf, len, inner, sizeof(inner));
    free(buf);
    if (!root)
        snprintf(err, errlen, "%s:%s", path, inner);
    return root;
}
