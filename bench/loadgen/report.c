/* JSON and text output of berth-loadgen. */
#include "bench/loadgen/report.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t lg_rss_kib(const int *pids, size_t n, int *ret_missing)
{
    uint64_t sum = 0;
    int missing = 0;
    long page_kib = sysconf(_SC_PAGESIZE) / 1024;
    for (size_t i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/statm", pids[i]);
        FILE *f = fopen(path, "r");
        unsigned long long size, resident;
        if (!f || fscanf(f, "%llu %llu", &size, &resident) != 2) {
            missing++;
        } else {
            sum += resident * (uint64_t)page_kib;
        }
        if (f)
            fclose(f);
    }
    if (ret_missing)
        *ret_missing = missing;
    return sum;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* Latency figures in microseconds with 0.1 us resolution. */
static void json_hist(FILE *f, const struct lg_hist *h)
{
    fprintf(f,
            "{\"count\": %" PRIu64 ", \"min\": %.1f, \"mean\": %.1f, \"p50\": %.1f, "
            "\"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}",
            h->count, h->count ? (double)h->min / 1e3 : 0.0, lg_hist_mean(h) / 1e3,
            (double)lg_hist_quantile(h, 0.50) / 1e3, (double)lg_hist_quantile(h, 0.90) / 1e3,
            (double)lg_hist_quantile(h, 0.99) / 1e3, (double)lg_hist_quantile(h, 0.999) / 1e3,
            (double)h->max / 1e3);
}

static const char *mode_name(enum lg_mode m)
{
    return m == LG_MODE_RATE ? "rate" : m == LG_MODE_SSE ? "sse" : "max";
}

int lg_report_json(FILE *f, const struct lg_opts *o, const struct lg_stats *s,
                   const struct lg_rss *rss, uint64_t run_ns, int prepare_failed)
{
    double window = (double)o->duration_ns / 1e9;
    uint64_t errors_total = 0;
    for (size_t i = 0; i < LG_ERR_COUNT; i++)
        errors_total += s->errors[i];
    fprintf(f, "{\n  \"label\": ");
    json_str(f, o->label);
    fprintf(f, ",\n  \"target\": ");
    json_str(f, o->target);
    fprintf(f,
            ",\n  \"mode\": \"%s\",\n  \"threads\": %" PRIu32 ",\n  \"connections\": %" PRIu32
            ",\n  \"sessions\": %" PRIu32 ",\n  \"churn\": %g,\n  \"rate\": %g,\n"
            "  \"duration_s\": %g,\n  \"warmup_s\": %g,\n  \"run_wall_s\": %.3f,\n"
            "  \"method\": \"%s\",\n  \"path\": ",
            mode_name(o->mode), o->threads, o->mode == LG_MODE_SSE ? o->streams : o->connections,
            o->sessions, o->churn, o->mode == LG_MODE_RATE ? o->rate : 0.0, window,
            (double)o->warmup_ns / 1e9, (double)run_ns / 1e9, o->method);
    json_str(f, o->path);
    fprintf(f,
            ",\n  \"body_size\": %" PRIu64 ",\n  \"prepare_failed\": %s,\n"
            "  \"requests\": %" PRIu64 ",\n  \"responses_all\": %" PRIu64 ",\n  \"sent\": %" PRIu64 ",\n  \"ok\": %" PRIu64
            ",\n  \"rps\": %.1f,\n  \"unsent\": %" PRIu64 ",\n  \"reconnects\": %" PRIu64
            ",\n  \"body_in_bytes\": %" PRIu64 ",\n  \"body_out_bytes\": %" PRIu64
            ",\n  \"throughput_mib_s\": %.2f,\n  \"latency_us\": ",
            o->body_size, prepare_failed ? "true" : "false", s->requests, s->responses_all,
            s->sent, s->ok,
            o->mode == LG_MODE_SSE ? 0.0 : (double)s->requests / window, s->unsent,
            s->reconnects, s->body_in, s->body_out,
            o->mode == LG_MODE_SSE ? 0.0
                                   : (double)(s->body_in + s->body_out) / window / 1048576.0);
    json_hist(f, &s->lat);
    fprintf(f, ",\n  \"status\": {");
    int first = 1;
    for (int i = 0; i < 600; i++)
        if (s->status[i]) {
            fprintf(f, "%s\"%d\": %" PRIu64, first ? "" : ", ", i, s->status[i]);
            first = 0;
        }
    fprintf(f, "},\n  \"errors_total\": %" PRIu64 ",\n  \"errors_unmeasured\": %" PRIu64
               ",\n  \"errors\": {",
            errors_total, s->errors_unmeasured);
    for (size_t i = 0; i < LG_ERR_COUNT; i++)
        fprintf(f, "%s\"%s\": %" PRIu64, i ? ", " : "", lg_err_names[i], s->errors[i]);
    fprintf(f, "},\n  \"sticky\": {\"instance_headers\": [");
    for (size_t i = 0; i < o->n_instance_headers; i++) {
        if (i)
            fprintf(f, ", ");
        json_str(f, o->instance_headers[i]);
    }
    fprintf(f,
            "], \"sessions_new\": %" PRIu64 ", \"sessions_checked\": %" PRIu64
            ", \"sessions_violated\": %" PRIu64 ", \"responses_checked\": %" PRIu64
            ", \"responses_mismatched\": %" PRIu64 ", \"instances\": {",
            s->sessions_new, s->sessions_checked, s->sessions_violated, s->responses_checked,
            s->errors[LG_ERR_STICKY]);
    for (size_t i = 0; i < s->n_inst; i++) {
        if (i)
            fprintf(f, ", ");
        json_str(f, s->inst[i].name);
        fprintf(f, ": %" PRIu64, s->inst[i].responses);
    }
    fprintf(f, "}, \"instances_overflow\": %" PRIu64 "}", s->inst_overflow);
    if (o->mode == LG_MODE_SSE) {
        fprintf(f,
                ",\n  \"sse\": {\"streams\": %" PRIu64 ", \"opened\": %" PRIu64
                ", \"failed\": %" PRIu64 ", \"every_ms\": %" PRIu32 ", \"events\": %" PRIu64
                ", \"open_us\": ",
                s->sse_streams, s->sse_opened, s->sse_failed, o->sse_every_ms, s->sse_events);
        json_hist(f, &s->sse_open);
        fprintf(f, ", \"cross_us\": ");
        json_hist(f, &s->sse_cross);
        fprintf(f, "}");
    }
    fprintf(f, ",\n  \"rss\": {\"pids\": [");
    for (size_t i = 0; i < o->n_watch_pids; i++)
        fprintf(f, "%s%d", i ? ", " : "", o->watch_pids[i]);
    fprintf(f, "]");
    if (rss->n_pids) {
        uint64_t streams = s->sse_opened;
        fprintf(f,
                ", \"before_kib\": %" PRIu64 ", \"open_kib\": %" PRIu64 ", \"peak_kib\": %" PRIu64
                ", \"end_kib\": %" PRIu64 ", \"after_kib\": %" PRIu64,
                rss->before_kib, rss->open_kib, rss->peak_kib, rss->end_kib, rss->after_kib);
        if (o->mode == LG_MODE_SSE && streams) {
            uint64_t hi = rss->end_kib > rss->open_kib ? rss->end_kib : rss->open_kib;
            double per = hi > rss->before_kib
                             ? (double)(hi - rss->before_kib) * 1024.0 / (double)streams
                             : 0.0;
            fprintf(f, ", \"per_stream_bytes\": %.0f", per);
        }
    }
    fprintf(f, "}\n}\n");
    return ferror(f) ? -EIO : 0;
}

void lg_report_summary(FILE *f, const struct lg_opts *o, const struct lg_stats *s,
                       const struct lg_rss *rss)
{
    uint64_t errors = 0;
    for (size_t i = 0; i < LG_ERR_COUNT; i++)
        errors += s->errors[i];
    if (o->mode == LG_MODE_SSE) {
        fprintf(f,
                "%s: sse streams=%" PRIu64 " opened=%" PRIu64 " failed=%" PRIu64
                " events=%" PRIu64 " cross p50=%.1fus p99=%.1fus rss %" PRIu64 "->%" PRIu64
                " KiB errors=%" PRIu64 " sticky_violations=%" PRIu64 "\n",
                o->label, s->sse_streams, s->sse_opened, s->sse_failed, s->sse_events,
                (double)lg_hist_quantile(&s->sse_cross, 0.5) / 1e3,
                (double)lg_hist_quantile(&s->sse_cross, 0.99) / 1e3, rss->before_kib,
                rss->end_kib, errors, s->sessions_violated);
        return;
    }
    double window = (double)o->duration_ns / 1e9;
    fprintf(f,
            "%s: %s requests=%" PRIu64 " rps=%.0f p50=%.1fus p99=%.1fus p99.9=%.1fus "
            "MiB/s=%.1f errors=%" PRIu64 " unsent=%" PRIu64 " sticky_violations=%" PRIu64 "\n",
            o->label, mode_name(o->mode), s->requests, (double)s->requests / window,
            (double)lg_hist_quantile(&s->lat, 0.5) / 1e3,
            (double)lg_hist_quantile(&s->lat, 0.99) / 1e3,
            (double)lg_hist_quantile(&s->lat, 0.999) / 1e3,
            (double)(s->body_in + s->body_out) / window / 1048576.0, errors, s->unsent,
            s->sessions_violated);
}
