#!/usr/bin/env python3
"""Seed inputs for the fuzz targets that need structured ones, written with the standard
library only: python3 fuzz/seeds.py TARGET DIR

- xray_registers: register frames of the X-ray verdict ring (see devices/src/xray.rs), in the
  target's layout [seen flag, seen hi, seen lo, ring byte, registers big-endian...].
- evidence_images: tiny valid JPEGs (baseline, greyscale, hand-encoded) and PNGs (grey, RGB,
  RGBA, palette, 16-bit, interlaced), each after the target's thumbnail selector byte; and
  spool file names.
- camera_digest: WWW-Authenticate digest challenges (RFC 7616 examples).

The images are checked by the evidence_images target itself: with BONDLINE_FUZZ_SHOW=1 it
prints what `process` made of each input.
"""

import os
import struct
import sys
import zlib


# --- X-ray verdict ring ------------------------------------------------------------------

def xray_entry(seq, scan_id, result, material, entered_ms):
    return [
        seq,
        scan_id >> 16,
        scan_id & 0xFFFF,
        (result << 8) | material,
        (entered_ms >> 48) & 0xFFFF,
        (entered_ms >> 32) & 0xFFFF,
        (entered_ms >> 16) & 0xFFFF,
        entered_ms & 0xFFFF,
    ]


def xray_read(head, entries, ring):
    regs = [head]
    for e in entries:
        regs += e
    regs += [0] * (1 + ring * 8 - len(regs))
    return regs


def xray_input(seen, ring_byte, regs):
    flag = 0 if seen is None else 1
    seen = seen or 0
    return bytes([flag, seen >> 8, seen & 0xFF, ring_byte]) + struct.pack(">%dH" % len(regs), *regs)


def xray_seeds():
    t = 1_790_000_000_123
    ring = 15
    # A ring holding 1..3, read after 1: two new verdicts.
    three = [xray_entry(s, 1000 + s, 1 + s % 3, s % 6, t + s * 900) for s in (1, 2, 3)]
    yield "three", xray_input(1, ring, xray_read(3, three, ring))
    # The first read of the process (nothing seen yet), then a second read.
    yield "first", xray_input(None, ring, xray_read(3, three, ring) + xray_read(4, three + [xray_entry(4, 1004, 3, 3, t + 5000)], ring))
    # Across the wrap: 65534, 65535, 1, 2 in a ring of 3.
    wrap = [xray_entry(1, 7, 2, 5, t), xray_entry(2, 8, 1, 0, t + 1), xray_entry(65535, 6, 1, 1, t - 1)]
    yield "wrap", xray_input(65533, 3, xray_read(2, wrap, 3))
    # A head that went backwards (the scanner restarted its numbering).
    yield "restart", xray_input(40000, ring, xray_read(3, three, ring))
    # A full ring of 15, read far behind (entries overwritten), one garbage entry.
    full = [xray_entry(100 + i, 5000 + i, 1 + i % 3, i % 6, t + i) for i in range(15)]
    full[7][3] = 0x7F09
    yield "full", xray_input(20, ring, xray_read(114, full, ring))
    # An odd-length answer read in one go.
    yield "short", xray_input(1, 0, xray_read(3, three, ring)[:13])


# --- PNG ---------------------------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width, height, colour_type, depth, rows, palette=None, interlace=0):
    """rows: the raw scanlines, without filter bytes."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n"
    out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace))
    if palette is not None:
        out += png_chunk(b"PLTE", palette)
    out += png_chunk(b"IDAT", zlib.compress(raw, 9))
    out += png_chunk(b"IEND", b"")
    return out


def png_seeds():
    w, h = 4, 3
    grey = [bytes((x * 60 + y * 20) % 256 for x in range(w)) for y in range(h)]
    yield "grey.png", png(w, h, 0, 8, grey)
    rgb = [bytes(v for x in range(w) for v in (x * 60, y * 80, 128)) for y in range(h)]
    yield "rgb.png", png(w, h, 2, 8, rgb)
    rgba = [bytes(v for x in range(w) for v in (x * 60, y * 80, 128, 255 - x * 40)) for y in range(h)]
    yield "rgba.png", png(w, h, 6, 8, rgba)
    pal = bytes([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 255])
    idx = [bytes([sum(((x + y) % 4) << (6 - 2 * x) for x in range(w))]) for y in range(h)]
    yield "palette.png", png(w, h, 3, 2, idx, palette=pal)
    deep = [struct.pack(">%dH" % w, *[(x * 16000 + y * 3000) & 0xFFFF for x in range(w)]) for y in range(h)]
    yield "grey16.png", png(w, h, 0, 16, deep)
    # Adam7 of a 1x1 image is a single pass of one pixel.
    yield "interlaced.png", png(1, 1, 0, 8, [b"\x80"], interlace=1)


# --- JPEG --------------------------------------------------------------------------------

# The standard luminance DC table (ITU T.81 Annex K.3).
DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_VALS = list(range(12))
# An AC table of one symbol, end-of-block, so every block is its DC alone.
AC_BITS = [1] + [0] * 15
AC_VALS = [0x00]


def huffman_codes(bits, vals):
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)  # byte stuffing
                self.acc = self.n = 0

    def finish(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with ones
        return bytes(self.out)


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_grey(blocks_x, blocks_y, level):
    """A baseline greyscale JPEG of blocks_x*8 by blocks_y*8 pixels, each 8x8 block of one
    grey level level(bx, by) (0..255): only DC coefficients, quantiser 1."""
    dc = huffman_codes(DC_BITS, DC_VALS)
    ac = huffman_codes(AC_BITS, AC_VALS)
    bw = BitWriter()
    prev = 0
    for by in range(blocks_y):
        for bx in range(blocks_x):
            coef = 8 * (level(bx, by) - 128)  # F(0,0) of a flat block, quantiser 1
            diff = coef - prev
            prev = coef
            size = abs(diff).bit_length()
            bw.put(*dc[size])
            if size:
                bw.put(diff if diff > 0 else diff + (1 << size) - 1, size)
            bw.put(*ac[0x00])
    out = b"\xFF\xD8"
    out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += segment(0xDB, b"\x00" + b"\x01" * 64)
    out += segment(0xC0, struct.pack(">BHHB", 8, blocks_y * 8, blocks_x * 8, 1) + b"\x01\x11\x00")
    out += segment(0xC4, b"\x00" + bytes(DC_BITS) + bytes(DC_VALS))
    out += segment(0xC4, b"\x10" + bytes(AC_BITS) + bytes(AC_VALS))
    out += segment(0xDA, b"\x01\x01\x00\x00\x3F\x00")
    out += bw.finish()
    out += b"\xFF\xD9"
    return out


def jpeg_seeds():
    yield "grey8.jpg", jpeg_grey(1, 1, lambda x, y: 128)
    yield "grey16x8.jpg", jpeg_grey(2, 1, lambda x, y: 40 + 170 * x)
    yield "grey24x16.jpg", jpeg_grey(3, 2, lambda x, y: (x * 90 + y * 50) % 256)


def image_seeds():
    # The target reads a thumbnail selector byte first: 32 + 4 * byte pixels.
    for name, data in list(jpeg_seeds()) + list(png_seeds()):
        yield name, b"\x20" + data
    for name in ["12345_top.jpg", "0_side-2.PNG", "4294967295_a.jpeg", "12/top/x"]:
        yield "name-" + name.replace("/", "-"), b"\x20" + name.encode()


# --- Digest challenges -------------------------------------------------------------------

def digest_seeds():
    yield "md5", b'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"\x00Mufasa\x00Circle of Life\x00/dir/index.html'
    yield "sha256", b'Digest realm="http-auth@example.org", qop="auth", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"\x00admin\x00secret\x00/snapshot.jpg'
    yield "plain", b'Digest realm=cam, nonce=abc, stale=FALSE, algorithm=MD5-sess, userhash=true, charset=UTF-8\x00u\x00p\x00/cgi-bin/snap.cgi?ch=1'


SEEDS = {
    "xray_registers": xray_seeds,
    "evidence_images": image_seeds,
    "camera_digest": digest_seeds,
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SEEDS:
        sys.exit("usage: seeds.py {%s} DIR" % ",".join(SEEDS))
    target, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS[target]():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
