/* print.c - a small printf: %d %i %u %x %X %p %s %c %% with flags '-' and '0',
 * widths, precision (also ".*" for strings) and the l, ll, z, h length
 * modifiers. printf and panic send each formatted message with one doorbell
 * PUTS exit. */
#include "runtime.h"

struct sink { char *out; size_t size, length; };

static void put(struct sink *s, char c) {
    if (s->length + 1 < s->size) s->out[s->length] = c;
    s->length++;
}

static void put_padded(struct sink *s, const char *text, size_t n, int width, int left, char pad) {
    int fill = width > (int)n ? width - (int)n : 0;
    if (!left) {
        /* zero padding goes after a sign */
        if (pad == '0' && n && text[0] == '-') { put(s, '-'); text++; n--; }
        while (fill-- > 0) put(s, pad);
    }
    for (size_t i = 0; i < n; i++) put(s, text[i]);
    if (left) while (fill-- > 0) put(s, ' ');
}

int vsnprintf(char *out, size_t size, const char *format, va_list args) {
    struct sink s = { out, size, 0 };
    for (const char *f = format; *f; f++) {
        if (*f != '%') { put(&s, *f); continue; }
        f++;
        int left = 0, width = 0, precision = -1, longs = 0;
        char pad = ' ';
        for (;; f++) {
            if (*f == '-') left = 1;
            else if (*f == '0') pad = '0';
            else break;
        }
        if (*f == '*') { width = va_arg(args, int); f++; }
        while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
        if (*f == '.') {
            f++;
            precision = 0;
            if (*f == '*') { precision = va_arg(args, int); f++; }
            while (*f >= '0' && *f <= '9') precision = precision * 10 + (*f++ - '0');
        }
        while (*f == 'l' || *f == 'z' || *f == 'h') { if (*f != 'h') longs++; f++; }
        char digits[24];
        int n = 0;
        switch (*f) {
        case 'd': case 'i': {
            int64_t v = longs ? va_arg(args, int64_t) : va_arg(args, int);
            uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            do { digits[23 - n++] = (char)('0' + u % 10); u /= 10; } while (u);
            if (v < 0) digits[23 - n++] = '-';
            put_padded(&s, digits + 24 - n, (size_t)n, width, left, pad);
            break;
        }
        case 'u': case 'x': case 'X': case 'p': {
            uint64_t u = *f == 'p' ? (uint64_t)va_arg(args, void *)
                       : longs ? va_arg(args, uint64_t) : va_arg(args, unsigned);
            unsigned base = *f == 'u' ? 10 : 16;
            const char *alphabet = *f == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            do { digits[23 - n++] = alphabet[u % base]; u /= base; } while (u);
            if (*f == 'p') { digits[23 - n++] = 'x'; digits[23 - n++] = '0'; }
            put_padded(&s, digits + 24 - n, (size_t)n, width, left, pad);
            break;
        }
        case 's': {
            const char *text = va_arg(args, const char *);
            if (!text) text = "(null)";
            size_t len = 0;
            while (text[len] && (precision < 0 || len < (size_t)precision)) len++;
            put_padded(&s, text, len, width, left, ' ');
            break;
        }
        case 'c': {
            char c = (char)va_arg(args, int);
            put_padded(&s, &c, 1, width, left, ' ');
            break;
        }
        case '%': put(&s, '%'); break;
        case 0: f--; break;
        default: put(&s, '%'); put(&s, *f); break;
        }
    }
    if (size) out[s.length < size ? s.length : size - 1] = 0;
    return (int)s.length;
}

int snprintf(char *out, size_t size, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsnprintf(out, size, format, args);
    va_end(args);
    return n;
}

void console_write(const char *text) {
    mmio_write64(boot->doorbell_base + DOORBELL_PUTS, (uint64_t)text);
}

int printf(const char *format, ...) {
    char line[4096];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    console_write(line);
    return n;
}

void panic(const char *format, ...) {
    char line[1024];
    int n = snprintf(line, sizeof line, "panic: ");
    va_list args;
    va_start(args, format);
    vsnprintf(line + n, sizeof line - (size_t)n, format, args);
    va_end(args);
    size_t len = strlen(line);
    if (len + 1 < sizeof line) { line[len] = '\n'; line[len + 1] = 0; }
    console_write(line);
    guest_exit(99);
}
