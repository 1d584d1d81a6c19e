//! The CloudFormation template (`cloudformation/taskflow-infrastructure.yaml`):
//! `cfn-lint` and `checkov` (PyPI; tests/run.sh installs both) find no error
//! in it, and the properties that matter hold in the template as
//! CloudFormation reads it (parsed by cfn-lint's own decoder, so `!Ref` and
//! friends are understood). A missing cfn-lint or checkov fails these tests;
//! they never skip.

use serde_json::{Value, json};

fn template_path() -> std::path::PathBuf {
    taskflow_tests::workspace_root().join("cloudformation/taskflow-infrastructure.yaml")
}

/// The template as JSON, intrinsic functions in their long form.
fn template() -> Value {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from cfnlint.decode import decode\n\
             template, problems = decode(sys.argv[1])\n\
             if problems: sys.exit('\\n'.join(str(p) for p in problems))\n\
             print(json.dumps(template))",
        ])
        .arg(template_path())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "cfn-lint must be installed (pip install cfn-lint; tests/run.sh does) and the template must parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the decoded template is JSON")
}

/// The resources of type `kind`, by logical id.
fn resources<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    template["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, resource)| resource["Type"] == kind)
        .map(|(id, resource)| (id.as_str(), &resource["Properties"]))
        .collect()
}

/// The properties of resource `id`, which must be of type `kind`.
fn resource<'a>(template: &'a Value, id: &str, kind: &str) -> &'a Value {
    let resource = &template["Resources"][id];
    assert_eq!(resource["Type"], kind, "{id} is a {kind}");
    &resource["Properties"]
}

/// `Hosts = Fargate`, as the template writes it.
fn hosts_are_fargate() -> Value {
    json!({"Fn::Equals": [{"Ref": "Hosts"}, "Fargate"]})
}

/// Whether the named condition can only hold with `Hosts = Fargate`.
fn fargate_only(template: &Value, condition: &str) -> bool {
    let definition = &template["Conditions"][condition];
    *definition == hosts_are_fargate()
        || definition["Fn::And"]
            .as_array()
            .is_some_and(|all| all.contains(&hosts_are_fargate()))
}

/// The first container of the task definition.
fn container(template: &Value) -> &Value {
    &resource(template, "TaskDefinition", "AWS::ECS::TaskDefinition")["ContainerDefinitions"][0]
}

/// The value the container's environment gives `name`.
fn environment<'a>(template: &'a Value, name: &str) -> &'a Value {
    container(template)["Environment"]
        .as_array()
        .expect("environment")
        .iter()
        .find(|variable| variable["Name"] == name)
        .map(|variable| &variable["Value"])
        .unwrap_or_else(|| panic!("the container's environment has no {name}"))
}

#[test]
fn cfn_lint_finds_no_error() {
    let output = std::process::Command::new("cfn-lint")
        .arg(template_path())
        .output()
        .expect("cfn-lint must be installed: pip install cfn-lint (tests/run.sh does)");
    assert!(
        output.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn checkov_finds_no_failed_check() {
    let output = std::process::Command::new("checkov")
        .arg("-f")
        .arg(template_path())
        .args([
            "--framework",
            "cloudformation",
            "--skip-download",
            "--compact",
            "--quiet",
        ])
        .env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true")
        .output()
        .expect(
            "checkov must be installed: pip install checkov (tests/run.sh does, in its own venv)",
        );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "checkov: {text}");
    assert!(
        text.contains("Failed checks: 0"),
        "checkov scanned nothing? {text}"
    );
}

/// A check is skipped only in the template, next to the resource, with the
/// reason written down.
#[test]
fn every_checkov_skip_says_why() {
    let template = template();
    let mut skips = 0;
    for (id, resource) in template["Resources"].as_object().expect("resources") {
        for skip in resource["Metadata"]["checkov"]["skip"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let check = skip["id"].as_str().unwrap_or_default();
            assert!(check.starts_with("CKV"), "{id}: {skip}");
            let reason = skip["comment"].as_str().unwrap_or_default();
            assert!(
                reason.split_whitespace().count() >= 8,
                "{id} skips {check} without a reason: {skip}"
            );
            skips += 1;
        }
    }
    assert!(skips > 0, "the skips are in the resources' Metadata");
}

#[test]
fn payloads_and_results_go_to_glacier_instant_retrieval_after_90_days() {
    let template = template();
    let buckets = resources(&template, "AWS::S3::Bucket");
    assert_eq!(buckets.len(), 1);
    let rules = buckets[0].1["LifecycleConfiguration"]["Rules"]
        .as_array()
        .expect("lifecycle rules");
    for prefix in ["payloads/", "results/"] {
        let rule = rules
            .iter()
            .find(|rule| rule["Prefix"] == prefix)
            .unwrap_or_else(|| panic!("no lifecycle rule for {prefix}"));
        assert_eq!(rule["Status"], "Enabled");
        // Instant Retrieval: still a plain GetObject, so GET /tasks/{id}
        // keeps answering with an old task's payload and result.
        assert_eq!(
            rule["Transitions"],
            json!([{"StorageClass": "GLACIER_IR", "TransitionInDays": 90}])
        );
        assert_eq!(rule["ExpirationInDays"], json!({"Ref": "BodyExpiryDays"}));
    }
    for rule in rules {
        for transition in rule["Transitions"].as_array().into_iter().flatten() {
            assert_ne!(
                transition["StorageClass"], "GLACIER",
                "Glacier Flexible Retrieval needs a restore before a read: {rule}"
            );
        }
    }
    let enabled = |field: &str| {
        rules
            .iter()
            .find(|rule| !rule[field].is_null())
            .filter(|rule| rule["Status"] == "Enabled" && rule["Prefix"].is_null())
            .map(|rule| rule[field].clone())
            .unwrap_or_else(|| panic!("no bucket-wide rule with {field}"))
    };
    assert_eq!(
        enabled("AbortIncompleteMultipartUpload"),
        json!({"DaysAfterInitiation": 7})
    );
    assert!(enabled("NoncurrentVersionExpiration")["NoncurrentDays"].is_u64());
}

#[test]
fn the_bucket_is_encrypted_never_public_and_refuses_plain_http() {
    let template = template();
    let (_, bucket) = resources(&template, "AWS::S3::Bucket")[0];
    let encryption = &bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
    assert!(
        encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            .as_str()
            .is_some_and(|algorithm| !algorithm.is_empty()),
        "{encryption}"
    );
    for setting in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(
            bucket["PublicAccessBlockConfiguration"][setting], true,
            "{setting}"
        );
    }
    let policies = resources(&template, "AWS::S3::BucketPolicy");
    assert_eq!(policies.len(), 1);
    let (_, policy) = policies[0];
    assert_eq!(policy["Bucket"], json!({"Ref": "BlobBucket"}));
    let statements = policy["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements");
    assert!(
        statements.iter().any(|statement| {
            statement["Effect"] == "Deny"
                && statement["Principal"] == "*"
                && statement["Action"] == "s3:*"
                && statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"
                && statement["Resource"]
                    == json!([{"Fn::GetAtt": ["BlobBucket", "Arn"]},
                        {"Fn::Sub": "${BlobBucket.Arn}/*"}])
        }),
        "every request without TLS is denied, on the bucket and its objects: {statements:?}"
    );
}

#[test]
fn every_band_queue_redrives_to_the_dead_letter_queue_and_keeps_messages_14_days() {
    let template = template();
    let queues = resources(&template, "AWS::SQS::Queue");
    let bands: Vec<_> = queues
        .iter()
        .filter(|(_, queue)| {
            queue["QueueName"]["Fn::Sub"]
                .as_str()
                .is_some_and(|name| name.contains("-band-"))
        })
        .collect();
    assert_eq!(bands.len(), 3, "one queue per band of 1-3,4-7,8-10");
    for (id, queue) in bands {
        assert_eq!(
            queue["RedrivePolicy"]["deadLetterTargetArn"],
            json!({"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}),
            "{id}"
        );
        assert!(!queue["RedrivePolicy"]["maxReceiveCount"].is_null(), "{id}");
        assert_eq!(
            queue["MessageRetentionPeriod"], 1_209_600,
            "{id} keeps a message 14 days, SQS's longest"
        );
    }
    let dead = &template["Resources"]["DeadLetterQueue"]["Properties"];
    assert_eq!(
        dead["QueueName"]["Fn::Sub"],
        "${AWS::StackName}-dead-letters"
    );
    assert_eq!(dead["MessageRetentionPeriod"], 1_209_600);
}

#[test]
fn no_password_is_a_parameter_or_written_down() {
    let template = template();
    for (name, parameter) in template["Parameters"].as_object().expect("parameters") {
        assert!(
            !name.to_lowercase().contains("password") && !name.to_lowercase().contains("secret"),
            "parameter {name} carries a secret"
        );
        assert!(
            parameter.get("NoEcho").is_none(),
            "parameter {name} is a secret"
        );
    }
    let databases = resources(&template, "AWS::RDS::DBInstance");
    assert_eq!(databases.len(), 1);
    let (_, database) = databases[0];
    assert_eq!(
        database["ManageMasterUserPassword"], true,
        "RDS generates it into Secrets Manager"
    );
    assert!(database.get("MasterUserPassword").is_none());
    assert_eq!(database["PubliclyAccessible"], false);
    // The password never reaches the host's environment: it reads the
    // secret itself (and again after a rotation).
    assert!(
        !serde_json::to_string(&template)
            .expect("json")
            .contains("PGPASSWORD")
    );
    assert_eq!(
        *environment(&template, "TASKFLOW_DATABASE_SECRET"),
        json!({"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]})
    );
}

/// TLS to the database, checked against the RDS CA by the endpoint's name,
/// and the server refusing anything else.
#[test]
fn the_database_speaks_tls_only_and_the_hosts_verify_it() {
    let template = template();
    let url = "postgres://taskflow@${Database.Endpoint.Address}:${Database.Endpoint.Port}/taskflow\
               ?sslmode=verify-full&sslrootcert=/etc/taskflow/rds-ca.pem";
    assert_eq!(
        *environment(&template, "TASKFLOW_DATABASE_URL"),
        json!({"Fn::Sub": url})
    );
    assert_eq!(
        template["Outputs"]["DatabaseUrl"]["Value"],
        json!({"Fn::Sub": url})
    );
    assert_eq!(
        template["Outputs"]["DatabaseSecretArn"]["Value"],
        json!({"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]})
    );
    let database = resource(&template, "Database", "AWS::RDS::DBInstance");
    assert_eq!(
        database["DBParameterGroupName"],
        json!({"Ref": "DatabaseParameters"})
    );
    let parameters = resource(
        &template,
        "DatabaseParameters",
        "AWS::RDS::DBParameterGroup",
    );
    assert_eq!(parameters["Parameters"]["rds.force_ssl"], "1");
    assert_eq!(
        parameters["Family"],
        json!({"Fn::Sub": "postgres${DatabaseEngineVersion}"})
    );
}

#[test]
fn the_database_follows_a_major_version_and_is_protected_from_deletion_by_default() {
    let template = template();
    let database = resource(&template, "Database", "AWS::RDS::DBInstance");
    assert_eq!(
        database["EngineVersion"],
        json!({"Ref": "DatabaseEngineVersion"})
    );
    let version = &template["Parameters"]["DatabaseEngineVersion"];
    let default = version["Default"].as_str().expect("a default version");
    assert!(
        !default.is_empty() && default.chars().all(|c| c.is_ascii_digit()),
        "a major version only, RDS picks the minor: {default}"
    );
    assert_eq!(version["AllowedPattern"], "^[0-9]+$");
    assert_eq!(database["AutoMinorVersionUpgrade"], true);

    assert_eq!(
        database["DeletionProtection"],
        json!({"Fn::If": ["DatabaseProtected", true, false]})
    );
    assert_eq!(
        template["Conditions"]["DatabaseProtected"],
        json!({"Fn::Equals": [{"Ref": "DatabaseDeletionProtection"}, "true"]})
    );
    assert_eq!(
        template["Parameters"]["DatabaseDeletionProtection"]["Default"],
        "true"
    );
    assert_eq!(
        template["Resources"]["Database"]["DeletionPolicy"],
        "Snapshot"
    );
}

/// `/health` (liveness), not `/ready`: readiness is about the shared
/// backends, the same for every host, so a database failover would fail it
/// on all of them at once and the load balancer would eject the whole fleet.
/// A host that cannot reach a backend answers 503 to the requests that need
/// it by itself.
#[test]
fn the_load_balancer_checks_liveness_not_readiness_and_only_it_reaches_the_hosts() {
    let template = template();
    let groups = resources(&template, "AWS::ElasticLoadBalancingV2::TargetGroup");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].1["HealthCheckPath"], "/health");
    let hosts = &template["Resources"]["HostSecurityGroup"]["Properties"]["SecurityGroupIngress"];
    assert_eq!(
        hosts,
        &json!([{"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080,
            "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"},
            "Description": "The load balancer"}])
    );
    let database =
        &template["Resources"]["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"];
    assert_eq!(
        database,
        &json!([{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
            "SourceSecurityGroupId": {"Ref": "HostSecurityGroup"},
            "Description": "The hosts"}])
    );
    // The load balancer lets in AllowedCidr only, on 443 only with a
    // certificate.
    let balancer = resource(
        &template,
        "LoadBalancerSecurityGroup",
        "AWS::EC2::SecurityGroup",
    );
    for rule in balancer["SecurityGroupIngress"]
        .as_array()
        .expect("ingress")
    {
        assert_eq!(rule["CidrIp"], json!({"Ref": "AllowedCidr"}), "{rule}");
        assert_eq!(rule["FromPort"], 80, "{rule}");
    }
    let https = &template["Resources"]["LoadBalancerHttpsIngress"];
    assert_eq!(https["Condition"], "HasCertificate");
    assert_eq!(https["Properties"]["FromPort"], 443);
    assert_eq!(https["Properties"]["CidrIp"], json!({"Ref": "AllowedCidr"}));
    let attributes = &resource(
        &template,
        "LoadBalancer",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
    )["LoadBalancerAttributes"];
    assert!(
        attributes.as_array().expect("attributes").contains(
            &json!({"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true"})
        ),
        "{attributes}"
    );
}

#[test]
fn with_a_certificate_https_serves_on_tls_1_2_or_later_and_http_redirects() {
    let template = template();
    assert_eq!(
        template["Conditions"]["HasCertificate"]["Fn::And"][1],
        json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "CertificateArn"}, ""]}]})
    );
    assert_eq!(template["Parameters"]["CertificateArn"]["Default"], "");

    let https = &template["Resources"]["HttpsListener"];
    assert_eq!(https["Condition"], "HasCertificate");
    let https = &https["Properties"];
    assert_eq!(https["Protocol"], "HTTPS");
    assert_eq!(https["Port"], 443);
    assert_eq!(
        https["Certificates"],
        json!([{"CertificateArn": {"Ref": "CertificateArn"}}])
    );
    let policy = https["SslPolicy"].as_str().expect("an SSL policy");
    assert!(
        policy.starts_with("ELBSecurityPolicy-TLS13-1-2")
            || policy.starts_with("ELBSecurityPolicy-TLS-1-2")
            || policy.starts_with("ELBSecurityPolicy-FS-1-2"),
        "TLS 1.2 at the least: {policy}"
    );
    assert_eq!(
        https["DefaultActions"],
        json!([{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}])
    );

    let http = resource(
        &template,
        "HttpListener",
        "AWS::ElasticLoadBalancingV2::Listener",
    );
    assert_eq!(http["Port"], 80);
    let [condition, with_certificate, without] = http["DefaultActions"]["Fn::If"]
        .as_array()
        .expect("port 80's action depends on the certificate")
        .as_slice()
    else {
        panic!("Fn::If takes three arguments")
    };
    assert_eq!(condition, "HasCertificate");
    assert_eq!(with_certificate[0]["Type"], "redirect");
    assert_eq!(with_certificate[0]["RedirectConfig"]["Protocol"], "HTTPS");
    assert_eq!(with_certificate[0]["RedirectConfig"]["Port"], "443");
    assert_eq!(
        with_certificate[0]["RedirectConfig"]["StatusCode"],
        "HTTP_301"
    );
    assert_eq!(
        without,
        &json!([{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}])
    );

    let scheme = &template["Outputs"]["ApiUrl"]["Value"]["Fn::Sub"];
    assert_eq!(scheme[0], "${Scheme}://${Host}");
    assert_eq!(
        scheme[1]["Scheme"],
        json!({"Fn::If": ["HasCertificate", "https", "http"]})
    );
}

/// `/metrics` is for a scraper inside the VPC: every listener that forwards
/// to the hosts answers it 404 itself.
#[test]
fn metrics_are_answered_404_by_every_listener_that_forwards() {
    let template = template();
    let rules = resources(&template, "AWS::ElasticLoadBalancingV2::ListenerRule");
    let hidden = |listener: &str| {
        rules
            .iter()
            .find(|(_, rule)| rule["ListenerArn"] == json!({"Ref": listener}))
            .map(|(id, rule)| (*id, *rule))
            .unwrap_or_else(|| panic!("no rule on {listener}"))
    };
    // Port 80 forwards only without a certificate; 443 exists only with one.
    for (listener, condition) in [
        ("HttpListener", "PlainHttp"),
        ("HttpsListener", "HasCertificate"),
    ] {
        let (id, rule) = hidden(listener);
        assert_eq!(template["Resources"][id]["Condition"], condition, "{id}");
        assert_eq!(
            rule["Conditions"],
            json!([{"Field": "path-pattern",
                "PathPatternConfig": {"Values": ["/metrics", "/metrics/*"]}}]),
            "{id}"
        );
        assert_eq!(rule["Actions"][0]["Type"], "fixed-response", "{id}");
        assert_eq!(
            rule["Actions"][0]["FixedResponseConfig"]["StatusCode"], "404",
            "{id}"
        );
        assert_eq!(rule["Priority"], 1, "{id}: before anything else");
    }
    assert_eq!(
        template["Conditions"]["PlainHttp"]["Fn::And"][1],
        json!({"Fn::Equals": [{"Ref": "CertificateArn"}, ""]})
    );
}

#[test]
fn the_api_tokens_reach_the_container_as_secrets_and_are_never_outputs() {
    let template = template();
    for id in ["ApiTokenSecret", "AdminTokenSecret"] {
        let secret = resource(&template, id, "AWS::SecretsManager::Secret");
        assert_eq!(template["Resources"][id]["Condition"], "OnFargate");
        assert_eq!(secret["GenerateSecretString"]["PasswordLength"], 40, "{id}");
        assert_eq!(
            secret["GenerateSecretString"]["ExcludePunctuation"], true,
            "{id}"
        );
        assert!(secret.get("SecretString").is_none(), "{id} is generated");
    }
    assert_eq!(
        container(&template)["Secrets"],
        json!([
            {"Name": "TASKFLOW_API_TOKEN", "ValueFrom": {"Ref": "ApiTokenSecret"}},
            {"Name": "TASKFLOW_ADMIN_TOKEN", "ValueFrom": {"Ref": "AdminTokenSecret"}}
        ])
    );
    let plain = container(&template)["Environment"].to_string();
    assert!(!plain.contains("TOKEN"), "{plain}");
    // Their ARNs are outputs (the CLI reads the values with the SDK); their
    // values never are.
    let outputs = template["Outputs"].as_object().expect("outputs");
    assert_eq!(
        outputs["ApiTokenSecretArn"]["Value"],
        json!({"Ref": "ApiTokenSecret"})
    );
    assert_eq!(
        outputs["AdminTokenSecretArn"]["Value"],
        json!({"Ref": "AdminTokenSecret"})
    );
    for (name, output) in outputs {
        let text = output["Value"].to_string();
        assert!(
            !text.contains("SecretString") && !text.contains("resolve:secretsmanager"),
            "output {name} shows a secret's value: {text}"
        );
    }
    // ECS (the execution role) reads the tokens; the database secret is the
    // host's own business.
    let execution = resource(&template, "ExecutionRole", "AWS::IAM::Role");
    assert_eq!(
        execution["Policies"][0]["PolicyDocument"]["Statement"],
        json!([{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
            "Resource": [{"Ref": "ApiTokenSecret"}, {"Ref": "AdminTokenSecret"}]}])
    );
}

#[test]
fn hosts_may_use_these_queues_and_this_bucket_and_nothing_else() {
    let template = template();
    let policies = resources(&template, "AWS::IAM::ManagedPolicy");
    assert_eq!(policies.len(), 1);
    let statements = policies[0].1["PolicyDocument"]["Statement"]
        .as_array()
        .expect("statements");
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow");
        let text = statement["Resource"].to_string();
        assert!(
            !text.contains('*') || text.contains("BlobBucket.Arn}/*"),
            "no wildcard resource: {text}"
        );
        for action in statement["Action"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&statement["Action"]))
        {
            if let Some(action) = action.as_str() {
                assert!(
                    action.starts_with("sqs:") || action.starts_with("s3:"),
                    "{action}"
                );
                assert!(!action.contains('*'), "no wildcard action: {action}");
            }
        }
    }
    // Fargate hosts: the policy, and reading the database's secret (their
    // own PostgreSQL is self-managed hosts' business).
    let role = resource(&template, "HostRole", "AWS::IAM::Role");
    assert_eq!(role["ManagedPolicyArns"], json!([{"Ref": "HostPolicy"}]));
    assert_eq!(
        role["Policies"],
        json!([{"PolicyName": "database-secret", "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                "Resource": {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}}]}}]),
        "the hosts' rights are the policy's and the database secret, nothing more"
    );
}

#[test]
fn self_managed_hosts_get_the_queues_the_bucket_the_policy_and_the_queue_alarms() {
    let template = template();
    let mut unconditional: Vec<&str> = template["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, resource)| resource.get("Condition").is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    unconditional.sort_unstable();
    assert_eq!(
        unconditional,
        [
            "AlarmTopic",
            "AlarmTopicKey",
            "BandQueue1",
            "BandQueue1AgeAlarm",
            "BandQueue2",
            "BandQueue2AgeAlarm",
            "BandQueue3",
            "BandQueue3AgeAlarm",
            "BlobBucket",
            "BlobBucketPolicy",
            "DeadLetterAlarm",
            "DeadLetterQueue",
            "HostPolicy"
        ],
        "with Hosts=SelfManaged nothing else is created"
    );
    for (id, resource) in template["Resources"].as_object().expect("resources") {
        if let Some(condition) = resource.get("Condition").and_then(Value::as_str) {
            assert!(
                condition == "HasAlarmEmail" || fargate_only(&template, condition),
                "{id} is created only on Fargate (its condition {condition})"
            );
        }
    }
    assert_eq!(
        template["Resources"]["AlarmEmailSubscription"]["Condition"],
        "HasAlarmEmail"
    );
    // The outputs `taskflow deploy` must find exist whatever the hosts.
    for output in [
        "SqsQueuePrefix",
        "S3Bucket",
        "Region",
        "SqsBands",
        "LeaseSecs",
        "HostPolicyArn",
        "AlarmTopicArn",
    ] {
        assert!(
            template["Outputs"][output].get("Condition").is_none(),
            "{output} is always there"
        );
    }
}

/// Fargate without an image creates everything but the hosts: `taskflow
/// deploy` then pushes the image to the repository and updates the stack.
#[test]
fn fargate_without_an_image_creates_all_but_the_service() {
    let template = template();
    assert!(
        template.get("Rules").is_none(),
        "no rule demands ContainerImage up front"
    );
    assert_eq!(template["Parameters"]["ContainerImage"]["Default"], "");
    assert_eq!(
        template["Conditions"]["HasImage"],
        json!({"Fn::And": [hosts_are_fargate(),
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "ContainerImage"}, ""]}]}]})
    );
    for (id, resource) in template["Resources"].as_object().expect("resources") {
        let kind = resource["Type"].as_str().unwrap_or_default();
        if kind.starts_with("AWS::ECS::TaskDefinition")
            || kind.starts_with("AWS::ECS::Service")
            || kind.starts_with("AWS::ApplicationAutoScaling::")
        {
            assert_eq!(resource["Condition"], "HasImage", "{id}");
        }
    }
    assert_eq!(
        template["Resources"]["ImageRepository"]["Condition"],
        "OnFargate"
    );
    assert_eq!(
        template["Outputs"]["ImageRepositoryUri"]["Value"],
        json!({"Fn::GetAtt": ["ImageRepository", "RepositoryUri"]})
    );
}

#[test]
fn the_image_repository_scans_on_push_and_never_overwrites_a_tag() {
    let template = template();
    let repository = resource(&template, "ImageRepository", "AWS::ECR::Repository");
    assert_eq!(
        repository["ImageScanningConfiguration"],
        json!({"ScanOnPush": true})
    );
    assert_eq!(repository["ImageTagMutability"], "IMMUTABLE");
    assert_eq!(
        repository["EncryptionConfiguration"]["EncryptionType"],
        "AES256"
    );
    let lifecycle: Value = serde_json::from_str(
        repository["LifecyclePolicy"]["LifecyclePolicyText"]
            .as_str()
            .expect("a lifecycle policy"),
    )
    .expect("the lifecycle policy is JSON");
    let rule = &lifecycle["rules"][0];
    assert_eq!(rule["selection"]["countType"], "imageCountMoreThan");
    assert_eq!(rule["selection"]["countNumber"], 20);
    assert_eq!(rule["action"]["type"], "expire");
}

#[test]
fn the_host_runs_read_only_as_an_unprivileged_user_with_its_data_on_a_volume() {
    let template = template();
    let task = resource(&template, "TaskDefinition", "AWS::ECS::TaskDefinition");
    assert_eq!(
        task["RuntimePlatform"],
        json!({"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"})
    );
    let container = container(&template);
    assert_eq!(container["User"], "10001");
    assert_eq!(container["ReadonlyRootFilesystem"], true);
    assert_eq!(
        container["HealthCheck"]["Command"],
        json!(["CMD", "/usr/local/bin/taskflow", "health"])
    );
    assert_eq!(
        *environment(&template, "TASKFLOW_DATA_DIR"),
        "/var/lib/taskflow"
    );
    let mount = &container["MountPoints"][0];
    assert_eq!(mount["ContainerPath"], "/var/lib/taskflow");
    assert_eq!(mount["ReadOnly"], false);
    assert!(
        task["Volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|volume| volume["Name"] == mount["SourceVolume"]
                && volume.get("EFSVolumeConfiguration").is_none()),
        "a task-level (ephemeral) volume: {task}"
    );
    assert_eq!(
        *environment(&template, "TASKFLOW_DATABASE_POOL_SIZE"),
        json!({"Ref": "DatabasePoolSize"})
    );
}

#[test]
fn hosts_scale_on_cpu_and_on_backlog_per_host_between_min_and_max() {
    let template = template();
    assert!(
        template["Parameters"].get("DesiredCount").is_none(),
        "MinHosts and MaxHosts replace DesiredCount"
    );
    assert_eq!(template["Parameters"]["MinHosts"]["Default"], 2);
    assert_eq!(template["Parameters"]["MaxHosts"]["Default"], 10);
    assert!(
        template["Parameters"]["MaxHosts"]["Description"]
            .as_str()
            .is_some_and(|d| d.contains("max_connections") && d.contains("DatabasePoolSize")),
        "MaxHosts states the database's bound"
    );
    let service = resource(&template, "Service", "AWS::ECS::Service");
    assert_eq!(service["DesiredCount"], json!({"Ref": "MinHosts"}));

    let target = resource(
        &template,
        "ScalableTarget",
        "AWS::ApplicationAutoScaling::ScalableTarget",
    );
    assert_eq!(target["ScalableDimension"], "ecs:service:DesiredCount");
    assert_eq!(target["MinCapacity"], json!({"Ref": "MinHosts"}));
    assert_eq!(target["MaxCapacity"], json!({"Ref": "MaxHosts"}));
    assert_eq!(
        target["ResourceId"],
        json!({"Fn::Sub": "service/${Cluster}/${Service.Name}"})
    );

    let policies = resources(&template, "AWS::ApplicationAutoScaling::ScalingPolicy");
    assert_eq!(policies.len(), 2);
    for (id, policy) in &policies {
        assert_eq!(policy["PolicyType"], "TargetTrackingScaling", "{id}");
        assert_eq!(
            policy["ScalingTargetId"],
            json!({"Ref": "ScalableTarget"}),
            "{id}"
        );
    }
    let tracking = |id: &str| {
        &resource(&template, id, "AWS::ApplicationAutoScaling::ScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    };
    let cpu = tracking("CpuScaling");
    assert_eq!(
        cpu["PredefinedMetricSpecification"]["PredefinedMetricType"],
        "ECSServiceAverageCPUUtilization"
    );
    assert_eq!(cpu["TargetValue"], json!({"Ref": "TargetCpuPercent"}));
    assert_eq!(template["Parameters"]["TargetCpuPercent"]["Default"], 60);

    let backlog = tracking("BacklogScaling");
    assert_eq!(backlog["TargetValue"], json!({"Ref": "BacklogPerHost"}));
    assert_eq!(template["Parameters"]["BacklogPerHost"]["Default"], 200);
    let metrics = backlog["CustomizedMetricSpecification"]["Metrics"]
        .as_array()
        .expect("metric math");
    let metric = |id: &str| {
        metrics
            .iter()
            .find(|m| m["Id"] == id)
            .map(|m| &m["MetricStat"]["Metric"])
            .unwrap_or_else(|| panic!("no metric {id}"))
    };
    for (id, queue) in [
        ("band1", "BandQueue1"),
        ("band2", "BandQueue2"),
        ("band3", "BandQueue3"),
    ] {
        assert_eq!(
            *metric(id),
            json!({"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]}),
        );
    }
    let hosts = metric("hosts");
    assert_eq!(hosts["Namespace"], "ECS/ContainerInsights");
    assert_eq!(hosts["MetricName"], "RunningTaskCount");
    let returned: Vec<_> = metrics.iter().filter(|m| m["ReturnData"] == true).collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["Expression"], "(band1 + band2 + band3) / hosts");
    // RunningTaskCount comes from Container Insights.
    assert_eq!(
        resource(&template, "Cluster", "AWS::ECS::Cluster")["ClusterSettings"],
        json!([{"Name": "containerInsights", "Value": "enabled"}])
    );
}

#[test]
fn a_failed_deployment_rolls_back_and_never_drops_below_the_running_hosts() {
    let template = template();
    let deployment =
        &resource(&template, "Service", "AWS::ECS::Service")["DeploymentConfiguration"];
    assert_eq!(
        deployment["DeploymentCircuitBreaker"],
        json!({"Enable": true, "Rollback": true})
    );
    assert_eq!(deployment["MinimumHealthyPercent"], 100);
    assert_eq!(deployment["MaximumPercent"], 200);
}

#[test]
fn every_alarm_notifies_the_encrypted_topic() {
    let template = template();
    let topic = resource(&template, "AlarmTopic", "AWS::SNS::Topic");
    // A customer-managed key CloudWatch may use: alarms cannot publish to a
    // topic under the AWS-managed alias/aws/sns key.
    assert_eq!(topic["KmsMasterKeyId"], json!({"Ref": "AlarmTopicKey"}));
    let key = resource(&template, "AlarmTopicKey", "AWS::KMS::Key");
    assert!(
        key["KeyPolicy"]["Statement"]
            .as_array()
            .expect("key policy")
            .iter()
            .any(|s| s["Principal"]["Service"] == "cloudwatch.amazonaws.com"
                && s["Action"].to_string().contains("kms:GenerateDataKey")),
        "CloudWatch may encrypt to the topic's key"
    );
    assert_eq!(
        template["Outputs"]["AlarmTopicArn"]["Value"],
        json!({"Ref": "AlarmTopic"})
    );
    assert_eq!(
        resource(
            &template,
            "AlarmEmailSubscription",
            "AWS::SNS::Subscription"
        )["Endpoint"],
        json!({"Ref": "AlarmEmail"})
    );

    let alarms = resources(&template, "AWS::CloudWatch::Alarm");
    for (id, alarm) in &alarms {
        assert_eq!(
            alarm["AlarmActions"],
            json!([{"Ref": "AlarmTopic"}]),
            "{id}"
        );
    }
    // An alarm on one metric, by id: its metric, dimension, comparison.
    let simple = |id: &str, metric: &str, comparison: &str, threshold: f64| {
        let alarm = resource(&template, id, "AWS::CloudWatch::Alarm");
        assert_eq!(alarm["MetricName"], metric, "{id}");
        assert_eq!(alarm["ComparisonOperator"], comparison, "{id}");
        assert_eq!(alarm["Threshold"].as_f64(), Some(threshold), "{id}");
        alarm
    };
    // The returned expression of a metric-math alarm, and the metrics it reads.
    let math = |id: &str, comparison: &str, threshold: f64| {
        let alarm = resource(&template, id, "AWS::CloudWatch::Alarm");
        assert_eq!(alarm["ComparisonOperator"], comparison, "{id}");
        assert_eq!(alarm["Threshold"].as_f64(), Some(threshold), "{id}");
        let metrics = alarm["Metrics"].as_array().expect("metric math");
        let expression = metrics
            .iter()
            .find(|m| m["ReturnData"] == true)
            .map(|m| m["Expression"].clone())
            .expect("an expression");
        let read: Vec<String> = metrics
            .iter()
            .filter_map(|m| m["MetricStat"]["Metric"]["MetricName"].as_str())
            .map(str::to_string)
            .collect();
        (expression, read)
    };

    let dead = simple(
        "DeadLetterAlarm",
        "ApproximateNumberOfMessagesVisible",
        "GreaterThanThreshold",
        0.0,
    );
    assert_eq!(
        dead["Dimensions"][0]["Value"],
        json!({"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]})
    );
    for band in ["BandQueue1", "BandQueue2", "BandQueue3"] {
        let age = simple(
            &format!("{band}AgeAlarm"),
            "ApproximateAgeOfOldestMessage",
            "GreaterThanThreshold",
            900.0,
        );
        assert_eq!(
            age["Dimensions"][0]["Value"],
            json!({"Fn::GetAtt": [band, "QueueName"]})
        );
    }

    let (rate, read) = math("TargetServerErrorsAlarm", "GreaterThanThreshold", 5.0);
    assert_eq!(read, ["HTTPCode_Target_5XX_Count", "RequestCount"]);
    assert!(
        rate.as_str().is_some_and(|e| e.contains("/ requests")),
        "{rate}"
    );
    simple(
        "LoadBalancerServerErrorsAlarm",
        "HTTPCode_ELB_5XX_Count",
        "GreaterThanOrEqualToThreshold",
        10.0,
    );
    let unhealthy = simple(
        "UnhealthyHostsAlarm",
        "UnHealthyHostCount",
        "GreaterThanThreshold",
        0.0,
    );
    assert!(
        unhealthy["Dimensions"]
            .to_string()
            .contains("TargetGroupFullName")
    );

    simple(
        "DatabaseCpuAlarm",
        "CPUUtilization",
        "GreaterThanThreshold",
        80.0,
    );
    let (free, read) = math("DatabaseStorageAlarm", "LessThanThreshold", 10.0);
    assert_eq!(read, ["FreeStorageSpace"]);
    assert_eq!(
        free,
        json!({"Fn::Sub": "100 * free / (${DatabaseStorageGiB} * 1073741824)"}),
        "a percentage of the allocated storage"
    );
    let (connections, read) = math("DatabaseConnectionsAlarm", "GreaterThanThreshold", 90.0);
    assert_eq!(read, ["DatabaseConnections"]);
    assert_eq!(
        connections,
        json!({"Fn::Sub": "100 * connections / (${MaxHosts} * ${DatabasePoolSize})"}),
        "near the bound MaxHosts × DatabasePoolSize"
    );

    // The queue alarms exist whatever the hosts; the rest only on Fargate.
    for (id, _) in &alarms {
        let condition = &template["Resources"][*id]["Condition"];
        if id.starts_with("BandQueue") || *id == "DeadLetterAlarm" {
            assert!(condition.is_null(), "{id}");
        } else {
            assert_eq!(condition, "OnFargate", "{id}");
        }
    }
    assert_eq!(alarms.len(), 10);
}

#[test]
fn s3_traffic_stays_off_the_nat_and_zone_b_can_have_its_own_nat() {
    let template = template();
    let endpoint = resource(&template, "S3Endpoint", "AWS::EC2::VPCEndpoint");
    assert_eq!(endpoint["VpcEndpointType"], "Gateway");
    assert_eq!(
        endpoint["ServiceName"],
        json!({"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"})
    );
    assert_eq!(
        endpoint["RouteTableIds"],
        json!([{"Ref": "PrivateRouteTable"}, {"Ref": "PrivateRouteTableB"}])
    );
    assert_eq!(
        template["Parameters"]["NatGatewayPerZone"]["Default"],
        "false"
    );
    for id in ["NatGatewayB", "NatAddressB"] {
        assert_eq!(template["Resources"][id]["Condition"], "NatPerZone", "{id}");
    }
    assert_eq!(
        resource(&template, "PrivateRouteB", "AWS::EC2::Route")["NatGatewayId"],
        json!({"Fn::If": ["NatPerZone", {"Ref": "NatGatewayB"}, {"Ref": "NatGateway"}]})
    );
    assert_eq!(
        resource(
            &template,
            "PrivateSubnetBRoutes",
            "AWS::EC2::SubnetRouteTableAssociation"
        )["RouteTableId"],
        json!({"Ref": "PrivateRouteTableB"})
    );
    // internal puts the load balancer in the private subnets.
    assert_eq!(
        resource(
            &template,
            "LoadBalancer",
            "AWS::ElasticLoadBalancingV2::LoadBalancer"
        )["Subnets"],
        json!({"Fn::If": ["Internal",
            [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}],
            [{"Ref": "PublicSubnetA"}, {"Ref": "PublicSubnetB"}]]})
    );
}
