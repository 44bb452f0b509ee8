/* Fuzz target: the YAML reader and the shared config loader (common/yaml.c, common/config.c).
 * The input is parsed from memory with cm_yaml_parse() and loaded as a config file through a
 * memfd (cm_config_load() reads a path), so both the tree builder and every typed getter see
 * it. Errors must be messages, never crashes or leaks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/config.h"
#include "common/yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char memfd_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    struct cm_ynode *root = cm_yaml_parse((const char *)data, size, err, sizeof(err));
    if (root) {
        (void)cm_ynode_get(root, "templates");
        cm_ynode_free(root);
    } else if (!err[0]) {
        abort();
    }

    if (memfd < 0) {
        memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
        if (memfd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
    }
    if (ftruncate(memfd, 0) < 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) {
        perror("memfd write");
        abort();
    }
    err[0] = '\0';
    struct cm_config *cfg = cm_config_load(memfd_path, err, sizeof(err));
    if (cfg) {
        for (size_t i = 0; i < cfg->n_templates; i++)
            (void)cm_config_template(cfg, cfg->templates[i].name);
        (void)cm_config_tenant_by_key(cfg, "berth-dev-key");
        cm_config_free(cfg);
    } else if (strncmp(err, memfd_path, strlen(memfd_path)) != 0) {
        /* every message starts with the file name */
        fprintf(stderr, "config error without the file name: %s\n", err);
        abort();
    }
    return 0;
}
