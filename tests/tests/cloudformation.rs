//! The CloudFormation template (`cloudformation/taskflow-infrastructure.yaml`):
//! `cfn-lint` (PyPI; tests/run.sh installs it) finds no error in it, and the
//! properties that matter hold in the template as CloudFormation reads it
//! (parsed by cfn-lint's own decoder, so `!Ref` and friends are understood).
//! A missing cfn-lint fails these tests; they never skip.

use serde_json::Value;

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
fn payloads_and_results_go_to_glacier_after_90_days() {
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
        assert_eq!(
            rule["Transitions"],
            serde_json::json!([{"StorageClass": "GLACIER", "TransitionInDays": 90}])
        );
        assert_eq!(
            rule["ExpirationInDays"],
            serde_json::json!({"Ref": "BodyExpiryDays"})
        );
    }
}

#[test]
fn the_bucket_is_encrypted_and_never_public() {
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
}

#[test]
fn every_band_queue_redrives_to_the_dead_letter_queue() {
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
            serde_json::json!({"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}),
            "{id}"
        );
        assert!(!queue["RedrivePolicy"]["maxReceiveCount"].is_null(), "{id}");
    }
    let dead = &template["Resources"]["DeadLetterQueue"]["Properties"];
    assert_eq!(
        dead["QueueName"]["Fn::Sub"],
        "${AWS::StackName}-dead-letters"
    );
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
}

#[test]
fn the_load_balancer_checks_ready_and_only_it_reaches_the_hosts() {
    let template = template();
    let groups = resources(&template, "AWS::ElasticLoadBalancingV2::TargetGroup");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].1["HealthCheckPath"], "/ready");
    let hosts = &template["Resources"]["HostSecurityGroup"]["Properties"]["SecurityGroupIngress"];
    assert_eq!(
        hosts,
        &serde_json::json!([{"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080,
            "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"}}])
    );
    let database =
        &template["Resources"]["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"];
    assert_eq!(
        database,
        &serde_json::json!([{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
            "SourceSecurityGroupId": {"Ref": "HostSecurityGroup"}}])
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
    let role = &template["Resources"]["HostRole"]["Properties"];
    assert_eq!(
        role["ManagedPolicyArns"],
        serde_json::json!([{"Ref": "HostPolicy"}])
    );
    assert!(
        role.get("Policies").is_none(),
        "the hosts' rights are the policy's, nothing more"
    );
}

#[test]
fn self_managed_hosts_get_only_the_queues_the_bucket_and_the_policy() {
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
            "BandQueue1",
            "BandQueue2",
            "BandQueue3",
            "BlobBucket",
            "DeadLetterQueue",
            "HostPolicy"
        ],
        "with Hosts=SelfManaged nothing else is created"
    );
    for (id, resource) in template["Resources"].as_object().expect("resources") {
        if let Some(condition) = resource.get("Condition") {
            assert_eq!(condition, "OnFargate", "{id}");
        }
    }
    // Fargate needs the image; the rule says so before anything is created.
    let rule = &template["Rules"]["FargateNeedsAnImage"];
    assert!(
        rule["Assertions"][0]["AssertDescription"]
            .as_str()
            .is_some_and(|d| d.contains("ContainerImage"))
    );
    // The outputs `taskflow deploy` must find exist whatever the hosts.
    for output in [
        "SqsQueuePrefix",
        "S3Bucket",
        "Region",
        "SqsBands",
        "LeaseSecs",
        "HostPolicyArn",
    ] {
        assert!(
            template["Outputs"][output].get("Condition").is_none(),
            "{output} is always there"
        );
    }
}
