/* common/yaml.c: libyaml events into a node tree with positions. */
#include <stdio.h>
#include <string.h>

#include "common/yaml.h"
#include "tests/harness/test.h"

static struct cm_ynode *parse(const char *s, char *err, size_t errlen)
{
    return cm_yaml_parse(s, strlen(s), err, errlen);
}

TEST(map_seq_scalar_with_positions)
{
    char err[256];
    struct cm_ynode *root = parse("a: 1\n"
                                  "list:\n"
                                  "  - x\n"
                                  "  - 'quoted'\n"
                                  "nested:\n"
                                  "    k: \"v\"\n",
                                  err, sizeof(err));
    CHECK_MSG(root != NULL, "%s", err);
    CHECK_INT_EQ(root->type, CM_YNODE_MAP);
    CHECK_UINT_EQ(root->n, 3);
    CHECK_UINT_EQ(root->line, 1);
    CHECK_UINT_EQ(root->col, 1);

    struct cm_ynode *a = cm_ynode_get(root, "a");
    CHECK(a && a->type == CM_YNODE_SCALAR);
    CHECK_STR_EQ(a->scalar, "1");
    CHECK_UINT_EQ(a->line, 1);
    CHECK_UINT_EQ(a->col, 4);
    CHECK(!a->quoted);

    struct cm_ynode *list = cm_ynode_get(root, "list");
    CHECK(list && list->type == CM_YNODE_SEQ && list->n == 2);
    CHECK_STR_EQ(list->items[0]->scalar, "x");
    CHECK_UINT_EQ(list->items[0]->line, 3);
    CHECK_UINT_EQ(list->items[0]->col, 5);
    CHECK_STR_EQ(list->items[1]->scalar, "quoted");
    CHECK(list->items[1]->quoted);

    struct cm_ynode *nested = cm_ynode_get(root, "nested");
    CHECK(nested && nested->type == CM_YNODE_MAP && nested->n == 1);
    struct cm_ynode *k = cm_ynode_get(nested, "k");
    CHECK_STR_EQ(k->scalar, "v");
    CHECK(k->quoted);
    CHECK_UINT_EQ(k->line, 6);
    CHECK_UINT_EQ(k->col, 8);
    /* keys are nodes too, with their own positions */
    CHECK_STR_EQ(nested->items[0]->scalar, "k");
    CHECK_UINT_EQ(nested->items[0]->col, 5);

    CHECK_NULL(cm_ynode_get(root, "missing"));
    CHECK_NULL(cm_ynode_get(list, "x")); /* not a map */
    CHECK_NULL(cm_ynode_get(NULL, "a"));
    cm_ynode_free(root);
}

TEST(flow_style_and_empty_values)
{
    char err[256];
    struct cm_ynode *root = parse("{a: [1, 2, {b: c}], e: , f: ~, g: ''}", err, sizeof(err));
    CHECK_MSG(root != NULL, "%s", err);
    struct cm_ynode *a = cm_ynode_get(root, "a");
    CHECK(a && a->type == CM_YNODE_SEQ && a->n == 3);
    CHECK_STR_EQ(cm_ynode_get(a->items[2], "b")->scalar, "c");
    CHECK_STR_EQ(cm_ynode_get(root, "e")->scalar, "");
    CHECK_STR_EQ(cm_ynode_get(root, "f")->scalar, "~");
    struct cm_ynode *g = cm_ynode_get(root, "g");
    CHECK(g->quoted && g->scalar[0] == '\0');
    cm_ynode_free(root);
}

TEST(scalar_root_and_multiline)
{
    char err[256];
    struct cm_ynode *root = parse("just text", err, sizeof(err));
    CHECK(root && root->type == CM_YNODE_SCALAR);
    CHECK_STR_EQ(root->scalar, "just text");
    cm_ynode_free(root);
    root = parse("k: |\n  line one\n  line two\n", err, sizeof(err));
    CHECK_NOT_NULL(root);
    CHECK_STR_EQ(cm_ynode_get(root, "k")->scalar, "line one\nline two\n");
    cm_ynode_free(root);
}

TEST(only_first_document)
{
    char err[256];
    struct cm_ynode *root = parse("---\na: 1\n---\na: 2\n", err, sizeof(err));
    CHECK_NOT_NULL(root);
    CHECK_STR_EQ(cm_ynode_get(root, "a")->scalar, "1");
    cm_ynode_free(root);
}

TEST(syntax_error_has_line_and_column)
{
    char err[256] = "";
    CHECK_NULL(parse("a: 1\nb: [unterminated\n", err, sizeof(err)));
    /* libyaml reports where it gave up: "line:col: problem" */
    unsigned line = 0, col = 0;
    CHECK_MSG(sscanf(err, "%u:%u:", &line, &col) == 2, "no position in: %s", err);
    CHECK(line >= 2);
    CHECK(col >= 1);

    CHECK_NULL(parse("a: 1\n  b: 2\n", err, sizeof(err)));
    CHECK_MSG(sscanf(err, "%u:%u:", &line, &col) == 2, "no position in: %s", err);
    CHECK_UINT_EQ(line, 2);
}

TEST(aliases_are_refused)
{
    char err[256] = "";
    CHECK_NULL(parse("base: &b {x: 1}\nother: *b\n", err, sizeof(err)));
    CHECK_STR_EQ(err, "2:8: aliases are not supported");
}

TEST(tags_are_refused)
{
    char err[256] = "";
    CHECK_NULL(parse("a: !!str 5\n", err, sizeof(err)));
    CHECK_CONTAINS(err, "tags are not supported");
    CHECK_STR_EQ(err, "1:4: tags are not supported");
    CHECK_NULL(parse("a: !custom {x: 1}\n", err, sizeof(err)));
    CHECK_CONTAINS(err, "tags are not supported");
}

TEST(empty_document)
{
    char err[256] = "";
    CHECK_NULL(parse("", err, sizeof(err)));
    CHECK_STR_EQ(err, "1:1: empty document");
    CHECK_NULL(parse("# only a comment\n", err, sizeof(err)));
    CHECK_STR_EQ(err, "1:1: empty document");
}

TEST(depth_is_bounded)
{
    char buf[4096];
    size_t n = 0;
    for (int i = 0; i < 100; i++)
        buf[n++] = '[';
    for (int i = 0; i < 100; i++)
        buf[n++] = ']';
    buf[n] = '\0';
    char err[256] = "";
    CHECK_NULL(parse(buf, err, sizeof(err)));
    CHECK_CONTAINS(err, "nested too deeply");
    /* 60 levels are fine */
    n = 0;
    for (int i = 0; i < 60; i++)
        buf[n++] = '[';
    for (int i = 0; i < 60; i++)
        buf[n++] = ']';
    buf[n] = '\0';
    struct cm_ynode *ok = parse(buf, err, sizeof(err));
    CHECK_MSG(ok != NULL, "%s", err);
    cm_ynode_free(ok);
}

TEST(errors_inside_maps_do_not_leak)
{
    /* a key whose value never came (the parser fails mid-map): freed with the tree */
    char err[256] = "";
    CHECK_NULL(parse("a:\n  b: 1\n  c: [1, *x]\n", err, sizeof(err)));
    CHECK_NULL(parse("a: {b: 1, c:", err, sizeof(err)));
    CHECK_NULL(parse("a: [1, 2", err, sizeof(err)));
}

TEST(load_prefixes_the_path)
{
    const char *path = test_write_file("c.yaml", "a: [1\n", (size_t)-1);
    char p[4096];
    snprintf(p, sizeof(p), "%s", path);
    char err[512] = "";
    CHECK_NULL(cm_yaml_load(p, err, sizeof(err)));
    CHECK_MSG(strncmp(err, p, strlen(p)) == 0 && err[strlen(p)] == ':', "%s", err);

    path = test_write_file("ok.yaml", "a: b\n", (size_t)-1);
    snprintf(p, sizeof(p), "%s", path);
    struct cm_ynode *root = cm_yaml_load(p, err, sizeof(err));
    CHECK_NOT_NULL(root);
    CHECK_STR_EQ(cm_ynode_get(root, "a")->scalar, "b");
    cm_ynode_free(root);

    snprintf(p, sizeof(p), "%s/missing.yaml", test_tmpdir());
    CHECK_NULL(cm_yaml_load(p, err, sizeof(err)));
    char want[4200];
    snprintf(want, sizeof(want), "%s: No such file or directory", p);
    CHECK_STR_EQ(err, want);
}

TEST(free_takes_null)
{
    cm_ynode_free(NULL);
}
