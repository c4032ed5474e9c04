package org.shaping.examples.rig;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.Future;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * A rig in Java, talking to Shaping over Kafka only: it enrols a mouse (MouseEnrolled), waits
 * for the AssignmentIssued the processor answers with, runs one session with that assignment's
 * stage and parameters (SessionStarted, TrialCompleted per trial, SessionEnded), and waits for
 * the assignment of the next session, printing each assignment it decodes.
 *
 * <p>Run {@code java -jar target/shaping-java-rig.jar --help} for the options. The last line it
 * prints, {@code RESULT {...}}, is the final assignment as JSON, for scripts.
 */
public final class JavaRig {

    private static final String USAGE = String.join("\n",
            "usage: java -jar shaping-java-rig.jar [options]",
            "  --bootstrap HOST:PORT  Kafka (default $SHAPING_BOOTSTRAP or 127.0.0.1:9092)",
            "  --prefix NAME          topic prefix (default $SHAPING_TOPIC_PREFIX or shaping)",
            "  --schemas DIR          the committed .avsc files (default $SHAPING_SCHEMAS_DIR"
                    + " or schemas/avro)",
            "  --mouse ID             mouse to enrol (default J001)",
            "  --rig ID               this rig's id (default java-rig-1)",
            "  --curriculum NAME      curriculum to enrol on (default basic-shaping)",
            "  --trials N             trials in the session (default 120)",
            "  --accuracy P           chance a simulated trial is correct (default 0.85)",
            "  --seed N               random seed (default 7)",
            "  --timeout S            seconds to wait for each assignment (default 60)");

    private final Contract contract;
    private final KafkaProducer<byte[], byte[]> producer;
    private final KafkaConsumer<byte[], byte[]> consumer;
    private final String eventsTopic;
    private final String mouse;
    private final String rig;

    private JavaRig(Contract contract, KafkaProducer<byte[], byte[]> producer,
            KafkaConsumer<byte[], byte[]> consumer, String eventsTopic, String mouse, String rig) {
        this.contract = contract;
        this.producer = producer;
        this.consumer = consumer;
        this.eventsTopic = eventsTopic;
        this.mouse = mouse;
        this.rig = rig;
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> opts = parse(argv);
        String bootstrap = opt(opts, "bootstrap", "SHAPING_BOOTSTRAP", "127.0.0.1:9092");
        String prefix = opt(opts, "prefix", "SHAPING_TOPIC_PREFIX", "shaping");
        Path schemas = Path.of(opt(opts, "schemas", "SHAPING_SCHEMAS_DIR", "schemas/avro"));
        String mouse = opt(opts, "mouse", null, "J001");
        String rig = opt(opts, "rig", null, "java-rig-1");
        String curriculum = opt(opts, "curriculum", null, "basic-shaping");
        int trials = Integer.parseInt(opt(opts, "trials", null, "120"));
        double accuracy = Double.parseDouble(opt(opts, "accuracy", null, "0.85"));
        long seed = Long.parseLong(opt(opts, "seed", null, "7"));
        Duration timeout = Duration.ofSeconds(Long.parseLong(opt(opts, "timeout", null, "60")));

        Contract contract = Contract.load(schemas);
        System.out.println("schemas from " + schemas.toAbsolutePath() + ": newest versions");
        for (String line : contract.describe()) {
            System.out.println("  " + line);
        }

        Properties producerProps = new Properties();
        producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        producerProps.put(ProducerConfig.CLIENT_ID_CONFIG, "shaping-java-rig-" + rig);
        // As every Shaping producer: the broker acknowledges only what all replicas have, and a
        // retried send is written once, in order.
        producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
        producerProps.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG,
                ByteArraySerializer.class.getName());
        producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG,
                ByteArraySerializer.class.getName());

        Properties consumerProps = new Properties();
        consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        consumerProps.put(ConsumerConfig.CLIENT_ID_CONFIG, "shaping-java-rig-" + rig
                + "-assignments");
        consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        consumerProps.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        consumerProps.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG,
                ByteArrayDeserializer.class.getName());
        consumerProps.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG,
                ByteArrayDeserializer.class.getName());

        int code;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps);
                KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps)) {
            // The compacted assignments topic, every partition, from the start, no group.
            String assignmentsTopic = prefix + ".assignments";
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : consumer.partitionsFor(assignmentsTopic, timeout)) {
                partitions.add(new TopicPartition(info.topic(), info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);

            JavaRig agent = new JavaRig(contract, producer, consumer, prefix + ".events", mouse,
                    rig);
            code = agent.run(curriculum, trials, accuracy, seed, timeout);
        }
        System.exit(code);
    }

    private int run(String curriculum, int trials, double accuracy, long seed, Duration timeout)
            throws Exception {
        // 1. Enrol.
        GenericRecordBuilder enrolled = contract.event("MouseEnrolled", mouse, rig, null, now())
                .set("curriculum_name", curriculum)
                .set("enrolled_by", "examples/java-rig");
        send(enrolled.build());

        // 2. The processor answers with the first assignment.
        long waitStart = System.nanoTime();
        GenericRecord first = awaitAssignment(1, timeout);
        if (first == null) {
            System.err.println("no assignment for " + mouse + " within " + timeout.toSeconds()
                    + " s: is the processor running?");
            return 1;
        }
        double waited = (System.nanoTime() - waitStart) / 1e9;

        // 3. One session with the assignment's stage and parameters.
        runSession(first, trials, accuracy, seed, waited);

        // 4. The decision on it comes with the next assignment.
        int next = ((Integer) first.get("session_number")) + 1;
        GenericRecord second = awaitAssignment(next, timeout);
        if (second == null) {
            System.err.println("no assignment for session " + next + " of " + mouse + " within "
                    + timeout.toSeconds() + " s");
            return 1;
        }
        System.out.println("RESULT " + json(second));
        return 0;
    }

    private void runSession(GenericRecord assignment, int trials, double accuracy, long seed,
            double waited) throws Exception {
        Random random = new Random(seed);
        String sessionId = mouse + "-java-" + System.currentTimeMillis();
        Map<String, Object> parameters = plain(assignment.get("parameters"));
        long started = now();

        Schema startSchema = contract.newest("SessionStarted").schema();
        GenericRecordBuilder start = contract.event("SessionStarted", mouse, rig, sessionId, started)
                .set("stage", assignment.get("stage").toString())
                .set("curriculum_name", assignment.get("curriculum_name").toString())
                .set("curriculum_version", assignment.get("curriculum_version").toString())
                .set("parameters", parameters)
                .set("assignment_id", assignment.get("event_id").toString());
        // Fields of newer schema versions, set when this checkout's newest schema has them.
        Contract.setIfPresent(start, startSchema, "session_date", LocalDate.now().toString());
        Contract.setIfPresent(start, startSchema, "assignment_stale", false);
        Contract.setIfPresent(start, startSchema, "assignment_wait_s", waited);
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        acks.add(sendAsync(start.build()));

        double reward = number(parameters.get("reward_volume_ul"), 2.0);
        double difficulty = number(parameters.get("difficulty"), 0.0);
        int correct = 0;
        for (int i = 0; i < trials; i++) {
            boolean right = random.nextDouble() < accuracy;
            String target = random.nextBoolean() ? "left" : "right";
            String response = right ? target : (target.equals("left") ? "right" : "left");
            correct += right ? 1 : 0;
            Map<String, Object> trialParameters = new LinkedHashMap<>();
            trialParameters.put("difficulty", difficulty);
            // A map of [null, boolean, long, double, string]: whole numbers must be Long. An
            // Integer matches no branch and Avro refuses it (UnresolvedUnionException).
            trialParameters.put("block", (long) (i / 40));
            GenericRecordBuilder trial = contract.event("TrialCompleted", mouse, rig, sessionId,
                    now())
                    .set("trial_index", i)
                    .set("outcome", right ? "correct" : "incorrect")
                    .set("target_side", target)
                    .set("response_side", response)
                    .set("reaction_time_s", 0.3 + 0.5 * random.nextDouble())
                    .set("reward_volume_ul", right ? reward : 0.0)
                    .set("correction_trial", false)
                    .set("trial_parameters", trialParameters);
            acks.add(sendAsync(trial.build()));
        }
        long ended = now();
        GenericRecordBuilder end = contract.event("SessionEnded", mouse, rig, sessionId, ended)
                .set("n_trials", trials)
                .set("end_reason", "completed")
                .set("duration_s", (ended - started) / 1000.0);
        acks.add(sendAsync(end.build()));
        producer.flush();
        for (Future<RecordMetadata> ack : acks) {
            ack.get();
        }
        System.out.printf("session %s: %d trials, %d correct, sent and acknowledged%n", sessionId,
                trials, correct);
    }

    // -- Kafka ---------------------------------------------------------------------------------

    private Future<RecordMetadata> sendAsync(GenericRecord event) throws Exception {
        byte[] value = contract.encode(event);
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(eventsTopic,
                mouse.getBytes(StandardCharsets.UTF_8), value);
        Contract.addHeaders(record.headers(), contract.newest(event.getSchema().getName()));
        return producer.send(record);
    }

    private void send(GenericRecord event) throws Exception {
        RecordMetadata meta = sendAsync(event).get();
        System.out.printf("sent %s %s to %s/%d@%d%n", event.get("event_type"),
                event.get("event_id"), meta.topic(), meta.partition(), meta.offset());
    }

    /** The newest assignment of this mouse for session {@code number} or later, or null. */
    private GenericRecord awaitAssignment(int number, Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        byte[] key = mouse.getBytes(StandardCharsets.UTF_8);
        while (System.nanoTime() < deadline) {
            for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(250))) {
                if (!Arrays.equals(record.key(), key) || record.value() == null) {
                    continue;
                }
                GenericRecord assignment;
                try {
                    assignment = contract.decode("AssignmentIssued", record.value());
                } catch (Exception e) { // not ours to judge: say so and read on
                    System.err.printf("skipping %s/%d@%d: %s%n", record.topic(),
                            record.partition(), record.offset(), e);
                    continue;
                }
                if ((Integer) assignment.get("session_number") >= number) {
                    print(assignment, record);
                    return assignment;
                }
            }
        }
        return null;
    }

    private void print(GenericRecord a, ConsumerRecord<byte[], byte[]> record) {
        Contract.Version writer = contract.writerOf(record.value());
        String written = writer == null ? "an unknown schema"
                : writer.eventType() + " v" + writer.version() + ", fingerprint "
                        + writer.fingerprintHex();
        System.out.printf("assignment for %s from %s/%d@%d (written with %s):%n",
                a.get("mouse_id"), record.topic(), record.partition(), record.offset(), written);
        System.out.printf("  session %s at stage %s of %s %s: %s%n", a.get("session_number"),
                a.get("stage"), a.get("curriculum_name"), a.get("curriculum_version"),
                a.get("reason"));
        System.out.println("  " + a.get("reason_detail"));
        System.out.println("  parameters: " + plain(a.get("parameters")));
        Object evidence = a.get("evidence");
        if (evidence instanceof List<?> rules) {
            for (Object rule : rules) {
                GenericRecord r = (GenericRecord) rule;
                System.out.printf("  rule %s -> %s: %s%n", r.get("rule"), r.get("to_stage"),
                        r.get("verdict"));
            }
        }
        System.out.println("  record: " + a);
    }

    // -- helpers -------------------------------------------------------------------------------

    private static long now() {
        return System.currentTimeMillis();
    }

    /** An Avro map as decoded (Utf8 keys and strings) with Java Strings instead. */
    private static Map<String, Object> plain(Object avroMap) {
        Map<String, Object> out = new LinkedHashMap<>();
        if (avroMap instanceof Map<?, ?> map) {
            for (Map.Entry<?, ?> e : map.entrySet()) {
                Object v = e.getValue();
                out.put(e.getKey().toString(), v instanceof CharSequence s ? s.toString() : v);
            }
        }
        return out;
    }

    private static double number(Object value, double fallback) {
        return value instanceof Number n ? n.doubleValue() : fallback;
    }

    private static String json(GenericRecord a) {
        Map<String, Object> fields = new LinkedHashMap<>();
        for (String name : List.of("event_id", "mouse_id", "stage", "curriculum_name",
                "curriculum_version", "session_number", "sessions_at_stage", "reason")) {
            fields.put(name, a.get(name));
        }
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Object> e : fields.entrySet()) {
            if (out.length() > 1) {
                out.append(", ");
            }
            out.append(quote(e.getKey())).append(": ");
            Object v = e.getValue();
            out.append(v instanceof Number || v == null ? String.valueOf(v) : quote(v.toString()));
        }
        return out.append("}").toString();
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String arg = argv[i];
            if (arg.equals("--help") || arg.equals("-h")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            if (!arg.startsWith("--") || i + 1 >= argv.length) {
                System.err.println("bad argument " + arg + "\n" + USAGE);
                System.exit(2);
            }
            opts.put(arg.substring(2), argv[++i]);
        }
        return opts;
    }

    private static String opt(Map<String, String> opts, String name, String env, String dflt) {
        if (opts.containsKey(name)) {
            return opts.get(name);
        }
        String fromEnv = env == null ? null : System.getenv(env);
        return fromEnv != null && !fromEnv.isEmpty() ? fromEnv : dflt;
    }
}
