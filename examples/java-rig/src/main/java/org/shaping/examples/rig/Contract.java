package org.shaping.examples.rig;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.common.header.Headers;

/**
 * The Shaping event contract, read from the committed {@code <EventType>.v<N>.avsc} files of
 * {@code schemas/avro}: nothing here repeats a schema.
 *
 * <p>A message value is Avro's single-object encoding, exactly what {@link BinaryMessageEncoder}
 * writes: {@code C3 01}, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
 * Parsing Canonical Form, then the Avro binary body. Events are always written with the newest
 * version of their type; a reader resolves any committed version to the newest.
 */
final class Contract {

    /** Value of the {@code content-type} header of every Shaping message. */
    static final String CONTENT_TYPE = "application/vnd.shaping.avro-single-object";

    private static final Pattern FILE = Pattern.compile("([A-Za-z]+)\\.v(\\d+)\\.avsc");

    /** One committed version of one event type's schema. */
    record Version(String eventType, int version, Schema schema, byte[] fingerprint) {
        String fingerprintHex() {
            return HexFormat.of().formatHex(fingerprint);
        }
    }

    private final Map<String, TreeMap<Integer, Version>> byType = new HashMap<>();
    private final Map<String, Version> byFingerprint = new HashMap<>();
    private final Map<String, BinaryMessageEncoder<GenericRecord>> encoders = new HashMap<>();
    private final Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();

    private Contract() {}

    /** Reads every schema file of {@code dir} (e.g. {@code schemas/avro} of the repository). */
    static Contract load(Path dir) throws IOException {
        Contract contract = new Contract();
        List<Path> files;
        try (Stream<Path> listing = Files.list(dir)) {
            files = listing.sorted(Comparator.naturalOrder()).toList();
        }
        for (Path file : files) {
            Matcher match = FILE.matcher(file.getFileName().toString());
            if (!match.matches()) {
                continue;
            }
            // A parser per file: the files each define their nested records (RuleEvaluation...).
            Schema schema = new Schema.Parser().parse(file.toFile());
            long fingerprint = SchemaNormalization.parsingFingerprint64(schema);
            byte[] wire = ByteBuffer.allocate(8)
                    .order(ByteOrder.LITTLE_ENDIAN)
                    .putLong(fingerprint)
                    .array();
            Version version = new Version(match.group(1), Integer.parseInt(match.group(2)), schema,
                    wire);
            contract.byType.computeIfAbsent(version.eventType(), k -> new TreeMap<>())
                    .put(version.version(), version);
            contract.byFingerprint.put(version.fingerprintHex(), version);
        }
        if (contract.byType.isEmpty()) {
            throw new IOException("no <EventType>.v<N>.avsc files in " + dir.toAbsolutePath());
        }
        return contract;
    }

    /** The newest version of an event type: the one a writer uses. */
    Version newest(String eventType) {
        TreeMap<Integer, Version> versions = byType.get(eventType);
        if (versions == null) {
            throw new IllegalArgumentException("no schema for event type " + eventType);
        }
        return versions.lastEntry().getValue();
    }

    /** The schema version that wrote a message, from its fingerprint; null if unknown. */
    Version writerOf(byte[] message) {
        if (message == null || message.length < 10 || (message[0] & 0xff) != 0xc3
                || message[1] != 0x01) {
            return null;
        }
        byte[] fingerprint = new byte[8];
        System.arraycopy(message, 2, fingerprint, 0, 8);
        return byFingerprint.get(HexFormat.of().formatHex(fingerprint));
    }

    /**
     * A builder for a new event of the newest version of {@code eventType}, with the envelope
     * filled in. Fields not set later take their schema defaults (fields added by newer versions
     * always have one).
     */
    GenericRecordBuilder event(String eventType, String mouseId, String rigId, String sessionId,
            long occurredAtMillis) {
        Version version = newest(eventType);
        return new GenericRecordBuilder(version.schema())
                .set("event_id", UUID.randomUUID().toString())
                .set("event_type", eventType)
                .set("schema_version", version.version())
                .set("mouse_id", mouseId)
                .set("rig_id", rigId)
                .set("session_id", sessionId)
                // timestamp-millis: a long, UTC milliseconds since 1970.
                .set("occurred_at", occurredAtMillis)
                .set("causation_id", null);
    }

    /** Sets a field only when the schema has it (a field of a newer version, e.g.). */
    static GenericRecordBuilder setIfPresent(GenericRecordBuilder builder, Schema schema,
            String field, Object value) {
        if (schema.getField(field) != null) {
            builder.set(field, value);
        }
        return builder;
    }

    /** The message value of an event: single-object encoding with Avro's own encoder. */
    byte[] encode(GenericRecord event) throws IOException {
        String eventType = event.getSchema().getName();
        BinaryMessageEncoder<GenericRecord> encoder = encoders.computeIfAbsent(eventType,
                type -> new BinaryMessageEncoder<>(GenericData.get(), newest(type).schema()));
        ByteBuffer buffer = encoder.encode(event);
        byte[] bytes = new byte[buffer.remaining()];
        buffer.get(bytes);
        return bytes;
    }

    /**
     * Decodes a message of {@code eventType} written with any committed version, resolved to the
     * newest (Avro schema resolution).
     */
    GenericRecord decode(String eventType, byte[] message) throws IOException {
        BinaryMessageDecoder<GenericRecord> decoder = decoders.computeIfAbsent(eventType, type -> {
            BinaryMessageDecoder<GenericRecord> d =
                    new BinaryMessageDecoder<>(GenericData.get(), newest(type).schema());
            for (Version older : byType.get(type).values()) {
                d.addSchema(older.schema());
            }
            return d;
        });
        return decoder.decode(message);
    }

    /**
     * The Kafka headers Shaping producers attach (schemas/README.md): generic tools route on
     * them; the processor reads only the value.
     */
    static void addHeaders(Headers headers, Version version) {
        headers.add("content-type", CONTENT_TYPE.getBytes(StandardCharsets.UTF_8));
        headers.add("shaping-event-type", version.eventType().getBytes(StandardCharsets.UTF_8));
        headers.add("shaping-schema-version",
                Integer.toString(version.version()).getBytes(StandardCharsets.UTF_8));
        headers.add("shaping-schema-fingerprint",
                version.fingerprintHex().getBytes(StandardCharsets.UTF_8));
    }

    /** Every event type and version known, for the start-up message. */
    List<String> describe() {
        List<String> out = new ArrayList<>();
        for (String type : new TreeMap<>(byType).keySet()) {
            Version v = newest(type);
            out.add(type + " v" + v.version() + " " + v.fingerprintHex());
        }
        return out;
    }
}
